"""Patch parameters, their samplers (docs/method.md §3.2–3.3) and real-patch extraction (docs/method.md §3.4).

A patch is a square window of the image given by its scale s and offset (o_x, o_y), all in fractions
of the image side: it spans x ∈ [o_x, o_x + s] from the left and y ∈ [o_y, o_y + s] from the *bottom*
(see ``epigraf.cameras.rays`` for the one place that turns this into pixel coordinates).

Grouping (docs/method.md §10 row 1): the minibatch-stddev layer of D groups samples strided, sample n in group
n mod (N/G). Sharing patch parameters across exactly those samples keeps each stddev statistic
computed over patches of one scale and place; the original shared them across consecutive samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from epigraf.cameras.rays import patch_sampling_grid
from epigraf.config import PatchConfig
from epigraf.schedules import patch_beta, patch_min_scale

# Scales and offsets come out of float32 arithmetic; o + s may exceed 1 by a rounding error.
_FIT_TOLERANCE = 1e-6


@dataclass
class PatchParams:
    """Patch scales [B, 2] (s_x, s_y) and offsets [B, 2] (o_x from the left, o_y from the bottom).

    All in fractions of the image side, in [0, 1], with scale + offset ≤ 1 so the patch lies inside the image.
    """

    scales: Tensor
    offsets: Tensor

    def __post_init__(self) -> None:
        for name in ("scales", "offsets"):
            value = getattr(self, name)
            if value.ndim != 2 or value.shape[1] != 2:
                raise ValueError(f"patch {name} must be [B, 2], got {list(value.shape)}")
            if not value.is_floating_point():
                raise ValueError(f"patch {name} must be floating point, got {value.dtype}")
            if not torch.isfinite(value).all():
                raise ValueError(f"patch {name} contain NaN or Inf")
        if self.scales.shape != self.offsets.shape:
            raise ValueError(
                f"patch scales {list(self.scales.shape)} and offsets {list(self.offsets.shape)} "
                "differ in shape"
            )
        if self.scales.device != self.offsets.device:
            raise ValueError(f"patch scales on {self.scales.device} but offsets on {self.offsets.device}")
        if not (self.scales > 0).all() or not (self.scales <= 1).all():
            raise ValueError(f"patch scales must be in (0, 1], got {self.scales.tolist()}")
        if not (self.offsets >= 0).all() or not (self.offsets <= 1).all():
            raise ValueError(f"patch offsets must be in [0, 1], got {self.offsets.tolist()}")
        if not (self.scales + self.offsets <= 1 + _FIT_TOLERANCE).all():
            raise ValueError(
                "patch must lie inside the image (scale + offset ≤ 1 per axis), got scales "
                f"{self.scales.tolist()} and offsets {self.offsets.tolist()}"
            )

    @classmethod
    def full(cls, batch_size: int, device: torch.device | str | None = None) -> PatchParams:
        """The whole image (s = 1, o = 0) for every sample."""
        return cls(torch.ones(batch_size, 2, device=device), torch.zeros(batch_size, 2, device=device))

    @classmethod
    def aligned(
        cls,
        left: list[int],
        top: list[int],
        image_resolution: int,
        patch_resolution: int,
        device: torch.device | str | None = None,
    ) -> PatchParams:
        """Pixel-aligned patches: sample k is image[..., top[k] : top[k] + r, left[k] : left[k] + r].

        Uses s = (r − 1)/(R − 1) and o = (left, R − r − top)/(R − 1) (docs/method.md §2.2): with this scale the
        patch pixel centres land exactly on image pixel centres.
        """
        if len(left) != len(top):
            raise ValueError(f"got {len(left)} left and {len(top)} top pixel positions")
        big, small = image_resolution, patch_resolution
        for name, values in (("left", left), ("top", top)):
            if any(not 0 <= v <= big - small for v in values):
                raise ValueError(f"{name} positions must be in [0, {big - small}], got {list(values)}")
        o_x = torch.tensor(left, dtype=torch.float32, device=device)
        o_y = big - small - torch.tensor(top, dtype=torch.float32, device=device)
        offsets = torch.stack([o_x, o_y], dim=1) / (big - 1)
        scales = torch.full_like(offsets, (small - 1) / (big - 1))
        return cls(scales, offsets)

    @property
    def batch_size(self) -> int:
        return self.scales.shape[0]

    def __len__(self) -> int:
        return self.batch_size

    def to(self, device: torch.device | str) -> PatchParams:
        return PatchParams(self.scales.to(device), self.offsets.to(device))


def sample_patch_params(
    batch_size: int,
    patch_cfg: PatchConfig,
    kimg: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> PatchParams:
    """Draw patch parameters for a batch at progress ``kimg`` (docs/method.md §3.2–3.3). → scales, offsets [B, 2].

    One (s, o) is drawn per minibatch-stddev group and shared by its members: with G = min(group_size, B),
    sample n gets draw n mod (B/G). Scales are square (s_x = s_y); offsets o_x, o_y ~ U(0, 1 − s)
    independently. With patches disabled every sample is the whole image. ``device`` defaults to the
    generator's device.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    if device is None and generator is not None:
        device = generator.device
    if not patch_cfg.enabled:
        return PatchParams.full(batch_size, device=device)
    if patch_cfg.group_size < 1:
        raise ValueError(f"patch group_size must be ≥ 1, got {patch_cfg.group_size}")
    group = min(patch_cfg.group_size, batch_size)
    if batch_size % group != 0:
        raise ValueError(
            f"batch size {batch_size} is not divisible by the minibatch-stddev group size {group}"
        )
    num_sets = batch_size // group

    scale = _sample_scales(num_sets, patch_cfg, kimg, generator, device)
    offsets = torch.rand(num_sets, 2, generator=generator, device=device) * (1.0 - scale).unsqueeze(1)
    scales = scale.unsqueeze(1).expand(num_sets, 2)
    return PatchParams(scales.repeat(group, 1), offsets.repeat(group, 1))


def _sample_scales(
    n: int,
    cfg: PatchConfig,
    kimg: float,
    generator: torch.Generator | None,
    device: torch.device | str | None,
) -> Tensor:
    """n patch scales in [min, max] from the configured distribution. → [n]."""
    if cfg.distribution == "beta":
        x = sample_beta(n, cfg.alpha, patch_beta(kimg, cfg), generator=generator, device=device)
        # The clamp only removes float32 rounding past the bounds, which PatchParams would reject.
        return (cfg.min_scale + (cfg.max_scale - cfg.min_scale) * x).clamp(cfg.min_scale, cfg.max_scale)
    low = patch_min_scale(kimg, cfg)
    if cfg.distribution == "uniform":
        u = torch.rand(n, generator=generator, device=device)
        return (low + (cfg.max_scale - low) * u).clamp(low, cfg.max_scale)
    # discrete_uniform: the tolerance keeps a support point equal to m(k) despite rounding in the schedule.
    support = [s for s in cfg.discrete_support if low - 1e-9 <= s <= cfg.max_scale + 1e-9]
    if not support:
        raise ValueError(
            f"no discrete patch scale of {cfg.discrete_support} lies in [{low}, {cfg.max_scale}] "
            f"at {kimg} kimg"
        )
    idx = torch.randint(len(support), (n,), generator=generator, device=device)
    return torch.tensor(support, dtype=torch.float32, device=device)[idx]


def sample_beta(
    n: int,
    alpha: float,
    beta: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """n draws of X ~ Beta(alpha, beta) driven only by ``generator``. → [n] float32 in [0, 1].

    alpha = 1 (the paper's sampler) uses the exact inverse CDF X = 1 − (1 − U)^(1/beta), written as
    −expm1(log1p(−U)/beta) so that beta → 0 gives X = 1 and large beta keeps precision near 0.
    Other alphas use X = Ga / (Ga + Gb) with Gamma draws from ``_log_gamma`` (torch's Gamma sampler
    takes no generator); the ratio is formed in log space so tiny shapes cannot give 0/0.
    """
    if alpha <= 0 or beta <= 0:
        raise ValueError(f"Beta parameters must be positive, got alpha={alpha}, beta={beta}")
    if alpha == 1.0:
        u = torch.rand(n, generator=generator, device=device)
        return -torch.expm1(torch.log1p(-u) / beta)
    log_a = _log_gamma(n, alpha, generator, device)
    log_b = _log_gamma(n, beta, generator, device)
    return torch.sigmoid(log_a - log_b).float()


def _log_gamma(
    n: int, shape: float, generator: torch.Generator | None, device: torch.device | str | None
) -> Tensor:
    """log of n Gamma(shape, 1) draws (Marsaglia & Tsang 2000, vectorised rejection). → [n] float64.

    For shape < 1 it uses Gamma(a) = Gamma(a + 1)·U^(1/a), kept in log space because U^(1/a)
    underflows for small a. Acceptance is above 95 % per round, so the loop ends after a few rounds.
    """
    a = shape + 1.0 if shape < 1.0 else shape
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    out = torch.empty(n, dtype=torch.float64, device=device)
    pending = torch.arange(n, device=device)
    while pending.numel() > 0:
        m = pending.numel()
        x = torch.randn(m, generator=generator, device=device, dtype=torch.float64)
        u = torch.rand(m, generator=generator, device=device, dtype=torch.float64)
        v = (1.0 + c * x) ** 3
        log_v = torch.log(v.clamp_min(1e-300))
        accept = (v > 0) & (torch.log(u) < 0.5 * x * x + d - d * v + d * log_v)
        out[pending[accept]] = math.log(d) + log_v[accept]
        pending = pending[~accept]
    if shape < 1.0:
        u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
        out = out + torch.log(u) / shape
    return out


def extract_patches(images: Tensor, patch_params: PatchParams, resolution: int) -> Tensor:
    """Resample real images at the patch's pixel centres (bilinear, align corners, zeros outside).

    images: [B, C, H, W]; patch_params: B patches. → [B, C, r, r] with r = resolution. No antialiasing:
    the image is point-sampled exactly where the generator's rays go (docs/method.md §3.4, §10 row 5).
    """
    if images.ndim != 4:
        raise ValueError(f"images must be [B, C, H, W], got {list(images.shape)}")
    if images.shape[0] != patch_params.batch_size:
        raise ValueError(f"{images.shape[0]} images but {patch_params.batch_size} patch parameters")
    on_device = patch_params.to(images.device)
    grid = patch_sampling_grid(on_device.scales, on_device.offsets, resolution).to(images.dtype)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
