"""What a depth map shows: the expected distance given that the ray hit something, and where it hit nothing.

The renderer returns, per ray, Σ wᵢ tᵢ and the opacity Σ wᵢ. Where a model leaves rays partly transparent (an
open far end, a background model, an untrained generator) Σ wᵢ < 1, and Σ wᵢ tᵢ is not a distance: it shrinks
towards 0 with the opacity, below the near plane. So maps for people — ``epigraf generate --depth`` and
``--normals``, ``video``, the viewer, ``invert`` — show the expected depth given a hit, Σ wᵢ tᵢ / Σ wᵢ, where
the opacity reaches :data:`SURFACE_OPACITY` (½, where the ray's median termination point lies inside the
volume, the rule the mesh's automatic iso-level uses too), and mark every other pixel as background.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from epigraf.cameras.rays import camera_directions, pixel_grid

# A ray hits the object when its accumulated opacity reaches this (geometry.py's surface level too).
SURFACE_OPACITY = 0.5


def surface_depth(depth: Tensor, opacity: Tensor | None,
                  threshold: float = SURFACE_OPACITY) -> tuple[Tensor, Tensor]:
    """The expected depth given a hit and where the rays hit.

    depth: [B, 1, H, W] the renderer's Σ wᵢ tᵢ (distance along unit rays); opacity: [B, 1, H, W] Σ wᵢ, or None
    for fully opaque renders. → (Σ wᵢ tᵢ / Σ wᵢ [B, 1, H, W], 0 where Σ wᵢ = 0; hit [B, 1, H, W] bool,
    Σ wᵢ ≥ ``threshold``).
    """
    if opacity is None:
        return depth, torch.ones_like(depth, dtype=torch.bool)
    expected = torch.where(opacity > 0, depth / opacity.clamp_min(1e-12), torch.zeros_like(depth))
    return expected, opacity >= threshold


def depth_normals(depth: Tensor, fov: Tensor, hit: Tensor | None = None) -> Tensor:
    """Camera-space unit normals from a depth map; zero vectors where there is no surface.

    depth: [B, 1, H, W] distance along each unit ray (an expected depth given a hit, :func:`surface_depth`);
    fov: [B] degrees; hit: [B, 1, H, W] bool, the pixels with a surface (None: all).
    → [B, 3, H, W] in OpenGL camera axes (+x image right, +y image up, +z towards the camera), each normal
    turned to face the camera. Each pixel is lifted to its 3D point P = depth · ray direction and the normal is
    the cross product of P's differences along the image axes: central where both neighbours are hits,
    one-sided at the object's outline (so background never enters a normal), zero without a hit neighbour.
    Where the surface itself jumps (an occluding edge inside the object) normals graze: this is the geometry
    the renders show, not the field's density gradient.
    """
    b, _, h, w = depth.shape
    dirs = camera_directions(pixel_grid(h, w, device=depth.device)[None], fov.to(depth)).reshape(b, h, w, 3)
    p = depth.permute(0, 2, 3, 1) * dirs  # [B, H, W, 3]
    ok = torch.ones_like(p[..., :1], dtype=torch.bool) if hit is None else hit.permute(0, 2, 3, 1)
    d_right = _difference(p, ok, dim=2)  # columns run left → right
    d_up = -_difference(p, ok, dim=1)  # rows run top → bottom
    n = F.normalize(torch.linalg.cross(d_right, d_up, dim=-1), dim=-1)
    facing_away = (n * dirs).sum(dim=-1, keepdim=True) > 0
    n = torch.where(facing_away, -n, n)
    return torch.where(ok, n, torch.zeros_like(n)).permute(0, 3, 1, 2)


def _difference(p: Tensor, ok: Tensor, dim: int) -> Tensor:
    """Per-pixel derivative of p [B, H, W, 3] along ``dim`` (1 or 2) from the valid (``ok``) pixels only:
    central where both neighbours are valid, one-sided where one is, zero where neither is."""
    n = p.shape[dim]
    if n < 2:
        return torch.zeros_like(p)
    forward = p.narrow(dim, 1, n - 1) - p.narrow(dim, 0, n - 1)  # p[i+1] − p[i], for i < n−1
    pair_ok = ok.narrow(dim, 1, n - 1) & ok.narrow(dim, 0, n - 1)
    zeros, no = torch.zeros_like(p.narrow(dim, 0, 1)), torch.zeros_like(ok.narrow(dim, 0, 1))
    ahead, ahead_ok = torch.cat([forward, zeros], dim), torch.cat([pair_ok, no], dim)  # p[i+1] − p[i]
    behind, behind_ok = torch.cat([zeros, forward], dim), torch.cat([no, pair_ok], dim)  # p[i] − p[i−1]
    both = ahead_ok & behind_ok
    central = (ahead + behind) / 2
    return torch.where(both, central, torch.where(ahead_ok, ahead, torch.where(behind_ok, behind, zeros)))
