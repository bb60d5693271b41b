"""Ray grids for full images and patches: the single home of the pixel convention (docs/method.md §2.2, §3.4).

Convention (align corners): column j of a w-wide grid sits at x_j = −1 + 2j/(w−1) and row i of an
h-high grid at y_i = 1 − 2i/(h−1), so ±1 are the centres of the border pixels and row 0 is the top.
Grids are flattened row-major (row 0 first, columns left to right). A patch (scale s, offset o, in
fractions of the image side) remaps the same grid to x' = (x + 1)·s_x − 1 + 2·o_x and
y' = (y + 1)·s_y − 1 + 2·o_y, so o_x is measured from the left edge and o_y from the *bottom* edge.

Real-patch extraction uses these very coordinates with y negated (``grid_sample`` indexes rows
top-down), which is what makes a real patch and a rendered patch show the same part of the image.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from epigraf.cameras.angles import Cameras, checked_angles


def pixel_grid(h: int, w: int, device: torch.device | str | None = None) -> Tensor:
    """Camera-plane coordinates of an h×w image's pixel centres. → [h*w, 2] (x, y), row-major, row 0 = top."""
    if h < 2 or w < 2:
        raise ValueError(f"the align-corners pixel grid needs at least 2×2 pixels, got {h}×{w}")
    xs = torch.linspace(-1.0, 1.0, w, dtype=torch.float32, device=device)
    ys = torch.linspace(1.0, -1.0, h, dtype=torch.float32, device=device)
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([x, y], dim=-1).reshape(h * w, 2)


def patch_grid(scales: Tensor, offsets: Tensor, resolution: int) -> Tensor:
    """Camera-plane coordinates of an r×r patch's pixels (r = resolution). → [B, r*r, 2] (x', y'), row-major.

    scales [B, 2] and offsets [B, 2] (a ``PatchParams``' fields); scales[:, 0] and offsets[:, 0] act on x,
    [:, 1] on y.
    """
    if scales.ndim != 2 or scales.shape[1] != 2 or offsets.shape != scales.shape:
        raise ValueError(f"patch scales and offsets must both be [B, 2], got {list(scales.shape)} and "
                         f"{list(offsets.shape)}")
    grid = pixel_grid(resolution, resolution, device=scales.device).to(scales.dtype)
    return (grid.unsqueeze(0) + 1.0) * scales.unsqueeze(1) - 1.0 + 2.0 * offsets.unsqueeze(1)


def patch_sampling_grid(scales: Tensor, offsets: Tensor, resolution: int) -> Tensor:
    """The ``grid_sample`` grid that reads the image pixels the patch's rays see. → [B, r, r, 2].

    It is ``patch_grid`` with y negated: grid_sample's second coordinate runs −1 → 1 from the top row down,
    while ours runs 1 → −1.
    """
    grid = patch_grid(scales, offsets, resolution)
    grid = torch.stack([grid[..., 0], -grid[..., 1]], dim=-1)
    return grid.reshape(grid.shape[0], resolution, resolution, 2)


def camera_directions(grid: Tensor, fov_deg: Tensor) -> Tensor:
    """Unit camera-space ray directions (OpenGL axes: looking along −z).

    grid: [B or 1, P, 2] camera-plane coordinates; fov_deg: [B] full field of view in degrees.
    → [B, P, 3] = normalise(x', y', −1/tan(fov/2)).
    """
    if grid.ndim != 3 or grid.shape[-1] != 2:
        raise ValueError(f"grid must be [B or 1, P, 2], got {list(grid.shape)}")
    if fov_deg.ndim != 1:
        raise ValueError(f"fov_deg must be [B], got {list(fov_deg.shape)}")
    batch = fov_deg.shape[0]
    if grid.shape[0] not in (1, batch):
        raise ValueError(f"grid batch {grid.shape[0]} does not match the {batch} fields of view")
    # The original converts with fov/360·2π; keeping that order keeps float32 rounding identical.
    plane_z = -1.0 / torch.tan(fov_deg / 360.0 * (2.0 * math.pi) / 2.0)
    grid = grid.to(fov_deg.dtype).expand(batch, -1, -1)
    z = plane_z.reshape(batch, 1, 1).expand(batch, grid.shape[1], 1)
    d = torch.cat([grid, z], dim=-1)
    return d / d.norm(dim=-1, keepdim=True)


def world_rays(cameras: Cameras, grid: Tensor) -> tuple[Tensor, Tensor]:
    """Rays of a batch of look-at-origin cameras through the given camera-plane coordinates.

    cameras: B cameras; grid: [B or 1, P, 2] from ``pixel_grid`` (unsqueezed) or ``patch_grid``.
    → origins [B, 3] (camera centres), directions [B, P, 3] (unit, world space).
    Pitch is validated and clamped on a copy, never on the caller's tensor.
    """
    safe = Cameras(checked_angles(cameras.angles), cameras.fov, cameras.radius)
    cam2world = safe.cam2world()
    d_cam = camera_directions(grid, safe.fov)
    rotation = cam2world[:, :3, :3]
    directions = torch.einsum("bij,bpj->bpi", rotation, d_cam)
    return cam2world[:, :3, 3], directions


def points_along_rays(origins: Tensor, directions: Tensor, depths: Tensor) -> Tensor:
    """World points o + z·d at distances z along unit rays.

    origins: [B, 3]; directions: [B, P, 3]; depths: [B, P, N] (or anything broadcastable to it).
    → [B, P, N, 3].
    """
    return origins[:, None, None, :] + depths.unsqueeze(-1) * directions.unsqueeze(2)
