"""Image grids written during training (reals once, G_ema fakes every few ticks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import Tensor

from epigraf.export.images import save_png, to_uint8


def save_image_grid(images: Tensor, path: Path, columns: int) -> Path:
    """images [N, 3, H, W] in [−1, 1] → one PNG with ``columns`` images per row."""
    tiles = to_uint8(images)
    n, h, w, _ = tiles.shape
    rows = -(-n // columns)
    grid = np.full((rows * h, columns * w, 3), 255, dtype=np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = tile
    return save_png(grid, path)
