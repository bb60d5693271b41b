"""Geometry of a generated scene: the raw density on a regular grid, an automatic iso-level, a coloured mesh
(docs/method.md §7.3).

The grid has ``resolution`` points per side over a cube of side ``cube_size`` centred at the world origin
(spacing cube_size / (resolution − 1), endpoints included), world units; volumes are indexed [x, y, z] with x
varying slowest, as the original's. The stored value is the *raw* pre-activation density (no softplus, no
density shift), as the original's.

    geo = extract_geometry(G, seeds_to_ws(G, [0]), resolution=128)
    save_mesh(geo.mesh, "seed0000.ply"); write_mrc(geo.volume, "seed0000.mrc", geo.spacing, geo.origin)

Iso-level rule (``auto_level``): the mesh should show the surface the renders show. A rendered ray's
median termination point is where its accumulated opacity reaches ½, i.e. where the optical depth
∫σ ds reaches ln 2 (docs/method.md §2.4). We march rays through the density grid itself along every grid line in
all six axis directions, find where each reaches optical depth ln 2, read the raw density there, and take
the median over the rays that become opaque. The surface at that level passes through the median
termination point, so the level follows each model's own density scale — the original's fixed threshold
(25.0 on the raw density) has to be tuned by hand per model — and needs no camera. Rays already opaque
within their first voxel start inside matter (the scene touches the cube's face) and are skipped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from epigraf.export.images import to_uint8
from epigraf.isosurface import Mesh, extract_isosurface
from epigraf.nn.field import split_planes
from epigraf.nn.generator import Generator
from epigraf.render.compositing import density_activation
from epigraf.render.depth import SURFACE_OPACITY  # the ray opacity of the surface: depth maps use it too

# Points per field evaluation: bounds memory (the tri-plane lookup holds 3·F floats per point).
CHUNK_POINTS = 2**18

Field = Callable[[Tensor], Tensor]


def grid_axis(resolution: int, cube_size: float) -> Tensor:
    """Coordinates of the grid along one axis: [resolution], −cube_size/2 … cube_size/2 inclusive."""
    if resolution < 2:
        raise ValueError(f"the grid needs at least 2 points per side, got {resolution}")
    if cube_size <= 0:
        raise ValueError(f"cube size must be positive, got {cube_size}")
    return torch.linspace(-cube_size / 2, cube_size / 2, resolution)


@torch.no_grad()
def sample_grid(field: Field, resolution: int, cube_size: float, device: torch.device | str = "cpu",
                chunk_points: int = CHUNK_POINTS) -> Tensor:
    """Evaluate ``field`` (points [P, 3] → values [P, C]) on the grid → [R, R, R, C] on the CPU, [x, y, z]."""
    axis = grid_axis(resolution, cube_size).to(device)
    yz = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), dim=-1).reshape(-1, 2)  # [R², 2]
    out = []
    # Whole x-slices per chunk keep the index order [x, y, z] without building all R³ points at once.
    slices = max(1, chunk_points // len(yz))
    for start in range(0, resolution, slices):
        xs = axis[start:start + slices]
        points = torch.cat([xs.repeat_interleave(len(yz))[:, None], yz.repeat(len(xs), 1)], dim=1)
        out.append(field(points).cpu())
    values = torch.cat(out)
    return values.reshape(resolution, resolution, resolution, values.shape[-1])


def generator_field(G: Generator, planes: Tensor, chunk_points: int = CHUNK_POINTS) -> Field:
    """The field of one generated scene: points [P, 3] (world) → [P, 4] (r, g, b in ≈[−1, 1], raw density).

    planes: [1, C, R_p, R_p], the tri-plane decoder output for one latent (``G.synthesize``).
    """
    if planes.shape[0] != 1:
        raise ValueError(f"give the tri-planes of one scene ([1, C, R, R]), got {list(planes.shape)}")
    feats = split_planes(planes, G.cfg.triplane_channels)

    @torch.no_grad()
    def field(points: Tensor) -> Tensor:
        points = points.to(planes.device, planes.dtype)
        return torch.cat([G.field(feats, points[None, i:i + chunk_points])[0]
                          for i in range(0, len(points), chunk_points)])

    return field


def auto_level(volume: Tensor, spacing: float, clamp_mode: str = "softplus", density_shift: float = 0.0) -> float:
    """The raw-density iso-level at which grid-aligned rays reach opacity ½ (module docstring: the rule).

    volume: [X, Y, Z] raw density; spacing: grid step in world units; clamp_mode, density_shift: the model's
    density activation (``G.cfg.render``), so that the optical depth is the one the renderer integrates.
    """
    raw = volume.detach().float().cpu()
    sigma = density_activation(raw, density_shift, clamp_mode)
    target = -math.log(1 - SURFACE_OPACITY)
    levels = []
    for axis in range(3):
        for flip in (False, True):
            r = raw.movedim(axis, -1)
            s = sigma.movedim(axis, -1)
            if flip:
                r, s = r.flip(-1), s.flip(-1)
            r, s = r.reshape(-1, r.shape[-1]), s.reshape(-1, s.shape[-1])
            step = 0.5 * (s[:, 1:] + s[:, :-1]) * spacing  # trapezoid optical depth per interval
            tau = step.cumsum(dim=1)
            hit = tau >= target
            k = hit.int().argmax(dim=1)  # first interval where the ray reaches the target
            keep = hit.any(dim=1) & (k > 0)
            rows, k = keep.nonzero()[:, 0], k[keep]
            frac = (target - tau[rows, k - 1]) / step[rows, k]
            levels.append(r[rows, k] + frac * (r[rows, k + 1] - r[rows, k]))
    levels = torch.cat(levels)
    if len(levels) == 0:
        raise ValueError("no ray through the grid becomes half opaque (the scene is empty or fills the cube): "
                         "pass --level, or change --cube-size")
    return float(levels.median())


def vertex_colors(field: Field, vertices: np.ndarray) -> np.ndarray:
    """The field's colour at each vertex [V, 3] → uint8 [V, 3], mapped from [−1, 1] like the images."""
    rgb = field(torch.from_numpy(vertices).float())[:, :3].cpu()  # [V, 3]
    return to_uint8(rgb.T[None, :, :, None])[0, :, 0]


@dataclass
class Geometry:
    """One scene's geometry: the raw density volume [R, R, R] ([x, y, z], CPU), the grid it was sampled on,
    the iso-level used and the coloured mesh at that level."""

    volume: Tensor
    cube_size: float
    level: float
    mesh: Mesh

    @property
    def spacing(self) -> float:
        return self.cube_size / (self.volume.shape[0] - 1)

    @property
    def origin(self) -> tuple[float, float, float]:
        """World position of voxel [0, 0, 0]."""
        return (-self.cube_size / 2,) * 3


@torch.no_grad()
def extract_geometry(G: Generator, ws: Tensor, resolution: int = 256, cube_size: float | None = None,
                     level: float | None = None, backend: str = "auto",
                     chunk_points: int = CHUNK_POINTS) -> Geometry:
    """ws [1, num_ws, w_dim] → Geometry: density grid, iso-level (``auto_level`` unless given), coloured mesh.

    ``cube_size`` defaults to the tri-plane cube, 2·cube_scale (the whole region the field represents; the
    original's default is 0.3). The tri-planes use the constant StyleGAN noise.
    """
    cube_size = 2 * G.cfg.camera.cube_scale if cube_size is None else cube_size
    field = generator_field(G, G.synthesize(ws, noise_mode="const"), chunk_points)
    volume = sample_grid(lambda p: field(p)[:, 3:], resolution, cube_size, ws.device, chunk_points)[..., 0]
    spacing = cube_size / (resolution - 1)
    if level is None:
        level = auto_level(volume, spacing, G.cfg.render.clamp_mode, G.cfg.render.density_shift)
    mesh = extract_isosurface(volume.numpy(), level, spacing, (-cube_size / 2,) * 3, backend)
    mesh.colors = vertex_colors(field, mesh.vertices)
    return Geometry(volume, cube_size, level, mesh)
