"""Hierarchical volume rendering of a field along camera rays
(docs/method.md §2.3–2.6, docs/deterministic-render.md §7).

coarse depths → field → coarse weights → importance depths → field → merge + sort → composite.
The field is any callable ``points [B, P, S, 3] → [B, P, S, 4]`` (rgb + raw density), so the renderer
knows nothing about tri-planes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from epigraf.render.compositing import composite, weight_distortion
from epigraf.render.samplers import coarse_depths, importance_depths

FieldFn = Callable[[Tensor], Tensor]

# A closed far end gives the last interval an "infinite" length, so every ray terminates inside the volume;
# an open one (with a background model, or a white backdrop) a short one, so rays can leave it.
LAST_DELTA_CLOSED = 1e10
LAST_DELTA_OPEN = 1e-3


@dataclass
class RaySamplingOptions:
    """What varies between training, evaluation and deterministic rendering."""

    num_steps: int
    near: float
    far: float
    deterministic: bool = False
    nerf_noise_std: float = 0.0
    density_shift: float = 0.0
    clamp_mode: str = "softplus"
    white_back: bool = False
    last_back: bool = False
    open_far_end: bool = False
    distortion: bool = False


@dataclass
class RayRender:
    """Per-ray results: color [B, P, C], depth [B, P, 1], opacity Σw [B, P, 1], final transmittance [B, P, 1]
    and, when the options ask for it, the weights' distortion [B, P, 1] (``weight_distortion``)."""

    color: Tensor
    depth: Tensor
    opacity: Tensor
    final_transmittance: Tensor
    distortion: Tensor | None = None


def render_rays(
    field: FieldFn,
    origins: Tensor,
    directions: Tensor,
    opts: RaySamplingOptions,
    generator: torch.Generator | None = None,
) -> RayRender:
    """Render rays with N coarse + N importance samples.

    origins [B, 3], directions [B, P, 3] (unit) → RayRender over the P rays.
    """
    b, p, _ = directions.shape
    last_delta = LAST_DELTA_OPEN if opts.open_far_end else LAST_DELTA_CLOSED
    o = origins[:, None, None, :]
    d = directions[:, :, None, :]

    z_coarse = coarse_depths(opts.near, opts.far, opts.num_steps, (b, p), opts.deterministic,
                             generator=generator, device=directions.device)
    out_coarse = field(o + d * z_coarse[..., None])
    weights = composite(
        out_coarse[..., :-1], out_coarse[..., -1], z_coarse, last_delta,
        density_shift=opts.density_shift, clamp_mode=opts.clamp_mode, noise_std=opts.nerf_noise_std,
        generator=generator,
    ).weights
    z_fine = importance_depths(z_coarse, weights, opts.num_steps, opts.deterministic, generator=generator)
    out_fine = field(o + d * z_fine[..., None])

    # Fine before coarse, then sort: the order the original merges in (ties are immaterial).
    z_all, order = torch.cat([z_fine, z_coarse], dim=-1).sort(dim=-1)
    out_all = torch.cat([out_fine, out_coarse], dim=-2)
    out_all = out_all.gather(-2, order[..., None].expand(-1, -1, -1, out_all.shape[-1]))
    result = composite(
        out_all[..., :-1], out_all[..., -1], z_all, last_delta,
        density_shift=opts.density_shift, clamp_mode=opts.clamp_mode, noise_std=opts.nerf_noise_std,
        white_back=opts.white_back, last_back=opts.last_back, generator=generator,
    )
    opacity = result.weights.sum(dim=-1, keepdim=True)
    distortion = weight_distortion(result.weights, z_all, opts.near, opts.far) if opts.distortion else None
    return RayRender(result.color, result.depth, opacity, result.final_transmittance, distortion)


def render_rays_chunked(
    field: FieldFn,
    origins: Tensor,
    directions: Tensor,
    opts: RaySamplingOptions,
    chunk_rays: int,
    generator: torch.Generator | None = None,
) -> RayRender:
    """``render_rays`` over chunks of ``chunk_rays`` rays to bound memory; same shapes as ``render_rays``."""
    if directions.shape[1] <= chunk_rays:
        return render_rays(field, origins, directions, opts, generator)
    parts = [
        render_rays(field, origins, directions[:, i : i + chunk_rays], opts, generator)
        for i in range(0, directions.shape[1], chunk_rays)
    ]
    return RayRender(*(
        None if getattr(parts[0], f.name) is None else torch.cat([getattr(r, f.name) for r in parts], dim=1)
        for f in dataclasses.fields(RayRender)
    ))
