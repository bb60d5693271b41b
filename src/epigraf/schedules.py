"""Every training schedule as a pure function of progress (docs/method.md §1.5, §3.2–3.3, §5.3–5.6).

Modules receive the scheduled value; they never own the clock. Progress is measured in kimg
(thousands of real images shown). A negative kimg is a bug in the caller, so it is rejected.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from epigraf.config import PatchConfig


def _ramp(kimg: float, span_kimg: float) -> float:
    """clip(kimg / span, 0, 1); a non-positive span means the schedule has already finished."""
    if kimg < 0:
        raise ValueError(f"kimg must be ≥ 0, got {kimg}")
    if span_kimg <= 0:
        return 1.0
    return min(kimg / span_kimg, 1.0)


def patch_beta(kimg: float, cfg: PatchConfig) -> float:
    """β(k) of the Beta patch-scale sampler: beta_start → beta_end linearly over anneal_kimg."""
    return cfg.beta_start + (cfg.beta_end - cfg.beta_start) * _ramp(kimg, cfg.anneal_kimg)


def patch_min_scale(kimg: float, cfg: PatchConfig) -> float:
    """Annealed minimum scale m(k) of the uniform samplers: max_scale → min_scale over anneal_kimg.

    With the default max_scale = 1 this is docs/method.md §3.3's m(k) = 1 + (m − 1)·clip(k/anneal, 0, 1); starting
    from max_scale keeps the support [m(k), max_scale] non-empty when max_scale < 1.
    """
    return cfg.max_scale + (cfg.min_scale - cfg.max_scale) * _ramp(kimg, cfg.anneal_kimg)


def nerf_noise_std(kimg: float, init: float = 1.0, growth_kimg: float = 5000.0) -> float:
    """Std of the training noise on raw density: init → 0 linearly over growth_kimg."""
    return init * (1.0 - _ramp(kimg, growth_kimg))


def blur_sigma(kimg: float, init: float = 10.0, fade_kimg: float = 200.0) -> float:
    """Std in pixels of the blur applied to D inputs: init → 0 linearly over fade_kimg."""
    return init * (1.0 - _ramp(kimg, fade_kimg))


def blur_kernel(sigma: float) -> Tensor:
    """Normalised 1D blur taps for integer t with |t| ≤ floor(3σ), weights ∝ 2^(−(t/σ)²). → [2·floor(3σ) + 1].

    σ = 0 (or any σ below 1/3) gives the identity kernel [1.].
    """
    if sigma < 0:
        raise ValueError(f"blur sigma must be ≥ 0, got {sigma}")
    radius = math.floor(3.0 * sigma)
    if radius == 0:
        return torch.ones(1)
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    weights = torch.exp2(-(t / sigma).square())
    return weights / weights.sum()


def ema_beta(batch_size: int, cur_nimg: float, ema_kimg: float = 20.0, rampup: float | None = 0.05) -> float:
    """Decay of the generator EMA: 0.5^(B / max(min(ema_kimg·1000, rampup·cur_nimg), 1e-8)).

    The ramp-up shortens the half-life early in training so G_ema is not stuck near its random init;
    ``rampup=None`` switches it off.
    """
    ema_nimg = ema_kimg * 1000.0
    if rampup is not None:
        ema_nimg = min(ema_nimg, cur_nimg * rampup)
    return 0.5 ** (batch_size / max(ema_nimg, 1e-8))


def gpc_spoof_prob(kimg: float, final: float = 0.5, anneal_kimg: float = 1000.0) -> float:
    """Probability that a sample's pose-conditioning camera is swapped: 1 → final, linear over anneal_kimg."""
    return 1.0 - (1.0 - final) * _ramp(kimg, anneal_kimg)


def adam_settings_for_lazy_reg(
    lr: float, betas: tuple[float, float], interval: int
) -> tuple[float, tuple[float, float]]:
    """Adam (lr, betas) for a network regularised lazily every ``interval`` steps.

    The regulariser's extra step every interval iterations makes interval + 1 updates per interval, so lr
    and the betas are rescaled by c = interval / (interval + 1) to keep the effective step per image.
    """
    if interval < 1:
        raise ValueError(f"lazy regularisation interval must be ≥ 1, got {interval}")
    c = interval / (interval + 1)
    return lr * c, (betas[0] ** c, betas[1] ** c)
