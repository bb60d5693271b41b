"""Image tensors ↔ files. Tensors are float [B, 3, H, W] in [−1, 1]; uint8 only at the file boundary."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from epigraf.render.depth import depth_normals, surface_depth


def to_uint8(images: Tensor) -> np.ndarray:
    """[B, 3, H, W] in [−1, 1] → uint8 [B, H, W, 3] (clamped, x·127.5 + 128 rounded down as the original)."""
    x = (images.detach().float().cpu() * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


# Depth PNGs: the expected depth given a hit from the near plane (white) to the far plane (this dark grey),
# background (opacity below SURFACE_OPACITY) black. Normal maps: background mid-grey (the zero vector).
DEPTH_NEAR_GREY, DEPTH_FAR_GREY, DEPTH_BACKGROUND = 255, 32, 0


def depth_to_uint8(depth: Tensor, near: float, far: float, *, opacity: Tensor | None) -> np.ndarray:
    """A depth map as people read it: uint8 grey [B, H, W, 3].

    depth: [B, 1, H, W] the renderer's Σ wᵢ tᵢ; opacity: its Σ wᵢ [B, 1, H, W] (None: fully opaque). Where the
    ray hits (Σ wᵢ ≥ ½, :mod:`epigraf.render.depth`) the expected depth Σ wᵢ tᵢ / Σ wᵢ runs from ``near`` (white,
    255) to ``far`` (grey 32); background is black (0).
    """
    expected, hit = surface_depth(_cpu(depth), None if opacity is None else _cpu(opacity))
    t = ((far - expected) / (far - near)).clamp(0, 1)
    grey = DEPTH_FAR_GREY + t * (DEPTH_NEAR_GREY - DEPTH_FAR_GREY)
    x = torch.where(hit, grey.round(), float(DEPTH_BACKGROUND)).to(torch.uint8).expand(-1, 3, -1, -1)
    return x.permute(0, 2, 3, 1).numpy()


def normals_to_uint8(depth: Tensor, fov: Tensor, *, opacity: Tensor | None) -> np.ndarray:
    """A normal map from a render's depth and opacity: uint8 RGB [B, H, W, 3] = (n + 1) / 2 of the camera-space
    normal (:func:`epigraf.render.depth.depth_normals`) where the ray hits, mid-grey (the zero vector) elsewhere.
    fov: [B] degrees."""
    expected, hit = surface_depth(_cpu(depth), None if opacity is None else _cpu(opacity))
    return to_uint8(depth_normals(expected, fov.cpu(), hit))


def _cpu(x: Tensor) -> Tensor:
    return x.detach().float().cpu()


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
