"""Image tensors ↔ files. Tensors are float [B, 3, H, W] in [−1, 1]; uint8 only at the file boundary."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor


def to_uint8(images: Tensor) -> np.ndarray:
    """[B, 3, H, W] in [−1, 1] → uint8 [B, H, W, 3] (clamped, x·127.5 + 128 rounded down as the original)."""
    x = (images.detach().float().cpu() * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def depth_to_uint8(depth: Tensor, near: float, far: float) -> np.ndarray:
    """Depth [B, 1, H, W] → uint8 grey [B, H, W, 3], near = white, far = black."""
    t = ((far - depth.detach().float().cpu()) / (far - near)).clamp(0, 1)
    x = (t * 255).round().to(torch.uint8).expand(-1, 3, -1, -1)
    return x.permute(0, 2, 3, 1).numpy()


def save_png(array: np.ndarray, path: str | os.PathLike) -> Path:
    """Save one uint8 [H, W, 3] image."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def image_grid(images: np.ndarray, num_cols: int) -> np.ndarray:
    """uint8 [N, H, W, 3] → one [rows·H, cols·W, 3] image, row-major; cells past N in the last row stay black."""
    if num_cols < 1:
        raise ValueError(f"a grid needs at least one column, got {num_cols}")
    n, h, w, ch = images.shape
    cols = min(num_cols, n)
    rows = -(-n // cols)
    grid = np.zeros((rows * cols, h, w, ch), dtype=images.dtype)
    grid[:n] = images
    return grid.reshape(rows, cols, h, w, ch).transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, ch)
