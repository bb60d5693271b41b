"""Depth samplers along rays: stratified coarse depths and inverse-CDF importance depths (docs/method.md §2.3, §12.1).

``deterministic=True`` removes every random draw (exact linspace coarse depths, u = linspace(0, 1, N)
for the inverse CDF), which is how the original's fixtures were rendered; training keeps both random.
"""

from __future__ import annotations

import torch
from torch import Tensor


def coarse_depths(
    near: float,
    far: float,
    num_steps: int,
    batch_shape: tuple[int, ...],
    deterministic: bool,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Coarse depths on [near, far] per ray. → [*batch_shape, num_steps], sorted along the last axis.

    Start from z = linspace(near, far, N). Unless deterministic, sample i is then drawn uniformly from
    [μ_{i−1}, μ_i] with μ_i = (z_i + z_{i+1})/2, the first bin starting at near and the last ending at
    far: the bins tile [near, far] without overlap, so the depths stay sorted and inside the bounds.
    """
    if num_steps < 2:
        raise ValueError(f"num_steps must be ≥ 2, got {num_steps}")
    if not near < far:
        raise ValueError(f"need near < far, got {near}, {far}")
    z = torch.linspace(near, far, num_steps, dtype=torch.float32, device=device)
    if deterministic:
        return z.expand(*batch_shape, num_steps).clone()
    mids = 0.5 * (z[1:] + z[:-1])
    lower = torch.cat([z[:1], mids])
    upper = torch.cat([mids, z[-1:]])
    u = torch.rand(*batch_shape, num_steps, generator=generator, device=device)
    return lower + (upper - lower) * u


def sample_pdf(
    bins: Tensor,
    weights: Tensor,
    num_samples: int,
    deterministic: bool,
    generator: torch.Generator | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Inverse-CDF samples of the piecewise-constant pdf ``weights`` over the intervals between ``bins``.

    bins: [..., M] sorted bin edges; weights: [..., M − 1] non-negative. → [..., num_samples].
    Follows the original exactly (docs/deterministic-render.md §7.5–7.7): eps is added to every weight, the cdf gets
    a leading 0, u falls in the bin of the first cdf entry ≥ u, and a bin whose cdf span is below eps is
    treated as having span 1 (so u in an empty bin maps to its lower edge). u = linspace(0, 1, N) when
    deterministic, else U(0, 1) draws from ``generator``.
    """
    if bins.shape[:-1] != weights.shape[:-1] or weights.shape[-1] != bins.shape[-1] - 1:
        raise ValueError(
            f"weights must be [..., M − 1] for bins [..., M], got {list(weights.shape)} "
            f"and {list(bins.shape)}"
        )
    weights = weights + eps
    pdf = weights / weights.sum(dim=-1, keepdim=True)
    cdf = torch.cumsum(pdf, dim=-1)
    cdf = torch.cat([torch.zeros_like(cdf[..., :1]), cdf], dim=-1).contiguous()

    lead = cdf.shape[:-1]
    if deterministic:
        u = torch.linspace(0.0, 1.0, num_samples, dtype=cdf.dtype, device=cdf.device)
        u = u.expand(*lead, num_samples).contiguous()
    else:
        u = torch.rand(*lead, num_samples, generator=generator, dtype=cdf.dtype, device=cdf.device)

    idx = torch.searchsorted(cdf, u, right=False)
    below = (idx - 1).clamp_min(0)
    above = idx.clamp_max(cdf.shape[-1] - 1)
    cdf_below, cdf_above = cdf.gather(-1, below), cdf.gather(-1, above)
    bins_below, bins_above = bins.gather(-1, below), bins.gather(-1, above)
    den = cdf_above - cdf_below
    den = torch.where(den < eps, torch.ones_like(den), den)
    return bins_below + (u - cdf_below) / den * (bins_above - bins_below)


def importance_depths(
    z_coarse: Tensor,
    weights_coarse: Tensor,
    num_samples: int,
    deterministic: bool,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Fine depths drawn where the coarse pass found mass (hierarchical sampling, one pass).

    z_coarse: [..., N] sorted coarse depths; weights_coarse: [..., N] their compositing weights.
    → [..., num_samples], detached (no gradient flows through the sample positions).
    As the original: every weight gets +1e-5, the bins are the N − 1 midpoints of the coarse depths and
    the pdf uses the N − 2 interior weights, to which ``sample_pdf`` adds another 1e-5 (+2e-5 in total).
    """
    z_coarse, weights_coarse = z_coarse.detach(), weights_coarse.detach()
    weights = weights_coarse + 1e-5
    bins = 0.5 * (z_coarse[..., :-1] + z_coarse[..., 1:])
    return sample_pdf(bins, weights[..., 1:-1], num_samples, deterministic, generator=generator).detach()
