"""Volume-rendering compositing along sorted ray samples (docs/method.md §2.4–2.5, docs/deterministic-render.md §6).

Callers pick the last interval δ_K: 1e10 without a background model (the ray always terminates in the
volume) and 1e-3 with one (so the background shows through whatever the foreground leaves).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

CLAMP_MODES = ("softplus", "relu")

# Keeps transmittance strictly positive after an opaque sample, as the original does.
_TRANSMITTANCE_EPS = 1e-10


@dataclass
class Composite:
    """Result of compositing K samples per ray.

    color: [..., C]; depth: [..., 1] = Σ w·z (not divided by Σ w); weights: [..., K];
    final_transmittance: [..., 1] = T_K, the transmittance in front of the last sample (excludes α_K).
    """

    color: Tensor
    depth: Tensor
    weights: Tensor
    final_transmittance: Tensor


def density_activation(raw: Tensor, shift: float = 0.0, clamp_mode: str = "softplus") -> Tensor:
    """σ = softplus(raw + shift) (β = 1, torch's linear regime above 20) or relu(raw + shift). Same shape."""
    if clamp_mode not in CLAMP_MODES:
        raise ValueError(f"clamp_mode must be one of {CLAMP_MODES}, got {clamp_mode!r}")
    raw = raw + shift
    return F.softplus(raw) if clamp_mode == "softplus" else F.relu(raw)


def weight_distortion(weights: Tensor, depths: Tensor, near: float, far: float) -> Tensor:
    """Mip-NeRF 360's distortion loss (Barron et al. 2022, eq. 15) of each ray's compositing weights, with
    depths mapped to [0, 1] over [near, far]: Σᵢⱼ wᵢwⱼ|mᵢ − mⱼ| + ⅓ Σᵢ wᵢ² sᵢ for intervals of width sᵢ from
    sample i to the next (the last has none) and midpoints mᵢ. Zero for an empty ray, small when the weight
    sits in one short interval, large when it is spread along the ray.

    weights, depths: [..., K] (depths sorted) → [..., 1].
    """
    s = (depths - near) / (far - near)
    widths = torch.cat([s[..., 1:] - s[..., :-1], torch.zeros_like(s[..., :1])], dim=-1)
    mids = s + widths / 2
    weighted_mids = weights * mids
    # Σᵢⱼ wᵢwⱼ|mᵢ − mⱼ| over sorted midpoints = 2 Σᵢ wᵢ (mᵢ Σ_{j<i} wⱼ − Σ_{j<i} wⱼmⱼ): O(K), not O(K²).
    weight_before = torch.cumsum(weights, dim=-1) - weights
    weighted_mids_before = torch.cumsum(weighted_mids, dim=-1) - weighted_mids
    cross = 2 * (weights * (mids * weight_before - weighted_mids_before)).sum(dim=-1, keepdim=True)
    return cross + (weights.square() * widths).sum(dim=-1, keepdim=True) / 3


def composite(
    colors: Tensor,
    raw_density: Tensor,
    depths: Tensor,
    last_delta: float,
    density_shift: float = 0.0,
    clamp_mode: str = "softplus",
    noise_std: float = 0.0,
    white_back: bool = False,
    last_back: bool = False,
    generator: torch.Generator | None = None,
) -> Composite:
    """Alpha-composite K sorted samples per ray.

    colors: [..., K, C]; raw_density: [..., K] pre-activation density; depths: [..., K] sorted distances
    along unit rays; last_delta: length of the last interval δ_K.
    noise_std > 0 adds N(0, noise_std²) (from ``generator``) to the raw density before the shift.
    last_back gives the missing opacity 1 − Σ w to the last sample (so it also enters the depth);
    white_back adds 1 − Σ w (computed before last_back) to the first 3 colour channels (white = +1).
    """
    if colors.shape[:-1] != raw_density.shape or depths.shape != raw_density.shape:
        raise ValueError(
            f"need colors [..., K, C], raw_density and depths [..., K]; got {list(colors.shape)}, "
            f"{list(raw_density.shape)}, {list(depths.shape)}"
        )
    deltas = depths[..., 1:] - depths[..., :-1]
    deltas = torch.cat([deltas, torch.full_like(deltas[..., :1], last_delta)], dim=-1)

    if noise_std > 0:
        noise = torch.randn(
            raw_density.shape, generator=generator, dtype=raw_density.dtype, device=raw_density.device
        )
        raw_density = raw_density + noise * noise_std
    sigma = density_activation(raw_density, density_shift, clamp_mode)

    alpha = 1.0 - torch.exp(-deltas * sigma)
    survive = torch.cat([torch.ones_like(alpha[..., :1]), 1.0 - alpha + _TRANSMITTANCE_EPS], dim=-1)
    transmittance = torch.cumprod(survive, dim=-1)[..., :-1]
    weights = alpha * transmittance
    total = weights.sum(dim=-1, keepdim=True)

    if last_back:
        weights = torch.cat([weights[..., :-1], weights[..., -1:] + (1.0 - total)], dim=-1)
    color = (weights.unsqueeze(-1) * colors).sum(dim=-2)
    depth = (weights * depths).sum(dim=-1, keepdim=True)
    if white_back:
        n = min(3, color.shape[-1])
        color = torch.cat([color[..., :n] + (1.0 - total), color[..., n:]], dim=-1)
    return Composite(color=color, depth=depth, weights=weights, final_transmittance=transmittance[..., -1:])
