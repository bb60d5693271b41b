"""NeRF++ inverted-sphere background (docs/method.md §1.6 "sphere", docs/deterministic-render.md §8).

Everything outside the unit sphere is described by points (x', y', z', v): v = 1/r ∈ [0, 1] is the inverse
radius of a spherical shell around the world origin and (x', y', z') the unit vector pointing at where the
ray crosses that shell. The unbounded outside thus becomes the bounded set S² × [0, 1], v = 0 being
infinity. A small INR-GAN-style MLP, modulated by 4 extra w slots, maps these points to (rgb, raw σ); the
samples of a ray are alpha-composited on their own and the generator adds the result behind the
foreground: C = C_fg + T_fg · C_bg.

Network (widths for the default config; module names are the original's, so its state dicts load as they are):

    (x', y', z', v) ── Fourier features: per coordinate sin(π·2^j·x) for j = 0..5, then cos(…)
                       (the original: coefficients π·2^j/64 on 64·x) → 4·(6 + 6) = 48
    blocks.0: conv1   ModFC 48 → 128 (lrelu, demodulated)        ← w slot 0
              to_out  ModFC 128 → 4 (linear, not demodulated)    ← w slot 1
    blocks.1: conv0   ModFC 128 → 128 (lrelu, demodulated)       ← w slot 1
              conv1   ModFC 128 → 128 (lrelu, demodulated)       ← w slot 2
              to_out  ModFC 128 → 4 (linear, not demodulated)    ← w slot 3
    output = Σ of the blocks' to_out = (r, g, b, raw σ), no output activation

This is StyleGAN2's synthesis network with fully connected layers in place of convolutions: the first
block has one layer, every later block two, each to_out reads the slot after its block's layers and the
next block's first layer shares that slot, so num_ws = 2·num_blocks. Block i is `min(channel_base /
2^(i+2), channel_max)` wide: StyleGAN's channels-per-resolution rule with block i standing at the virtual
resolution 2^(i+2). The generator's mapping produces these slots after the tri-plane synthesis' own.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from epigraf.config import SphereBackgroundConfig
from epigraf.nn.layers import LRELU_GAIN, FullyConnected, leaky_clamp_, log_fourier_coefficients
from epigraf.render.compositing import composite
from epigraf.render.samplers import coarse_depths

COORD_DIM = 4
OUTPUT_CHANNELS = 4
# The outermost sample stands for everything up to infinity, so its interval never ends.
LAST_DELTA = 1e10


def inverted_sphere_points(origins: Tensor, directions: Tensor, inv_depths: Tensor) -> Tensor:
    """NeRF++ inverted-sphere coordinates of where each ray leaves the shells of radius r = 1/v.

    origins [B, 3]; directions [B, P, 3] (unit); inv_depths v [B, P, K] in [0, 1]. → [B, P, K, 4] (x', y', z', v).

    For the ray o + t·d and the shell |x| = r ≥ |o|, the exit distance is t_r = −(o·d) + √(r² − h²) with
    h² = |o|² − (o·d)² the squared distance of the ray's line from the origin. Dividing the exit point by r:

        (x', y', z') = (o + t_r·d)/r = v·o + s·d,   s = t_r·v = −v·(o·d) + √(1 − v²h²),

    which is a unit vector (|v·o + s·d|² = v²h² + 1 − v²h² = 1). Written in v rather than r the formula has no
    division, so v = 0 (r = ∞) is exact: s = 1 and the point at infinity lies in direction d. A shell that
    misses the ray's line (r < h, only possible for origins outside the unit sphere and v near 1) has its
    radicand clamped to 0, i.e. it is replaced by the ray's closest approach scaled by v.
    """
    o = origins[:, None, None, :]
    d = directions[:, :, None, :]
    v = inv_depths[..., None]
    o_dot_d = (o * d).sum(dim=-1, keepdim=True)
    h2 = (o.square().sum(dim=-1, keepdim=True) - o_dot_d.square()).clamp_min(0.0)
    s = (1.0 - v.square() * h2).clamp_min(0.0).sqrt() - v * o_dot_d
    return torch.cat([v * o + s * d, v], dim=-1)


class ModulatedFullyConnected(nn.Module):
    """StyleGAN2 weight modulation for a fully connected layer, applied to activations.

    The affine (bias init 1) turns w into per-input-feature styles s; the effective per-sample weight
    W'_oi = W_oi·s_i is, when demodulating, rescaled to unit L2 norm per output (the equalised-lr gain
    cancels there); otherwise the styles carry the 1/√in gain, as in StyleGAN2's toRGB.
    """

    def __init__(
        self, in_features: int, out_features: int, w_dim: int, demodulate: bool = True, activation: bool = True
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.demodulate, self.activation = demodulate, activation
        self.affine = FullyConnected(w_dim, in_features, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.weight_gain = 1.0 / math.sqrt(in_features)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        """x [B, N, in], w [B, w_dim] → [B, N, out]."""
        styles = self.affine(w)
        if not self.demodulate:
            styles = styles * self.weight_gain
        weight = self.weight.to(x.dtype)
        x = F.linear(x * styles[:, None, :], weight)
        if self.demodulate:
            dcoefs = (styles.square() @ weight.square().T + 1e-8).rsqrt()  # [B, out]
            x = x * dcoefs[:, None, :]
        x = x + self.bias.to(x.dtype)
        return leaky_clamp_(x, gain=LRELU_GAIN) if self.activation else x

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, demod={self.demodulate}, lrelu={self.activation}"


class SphereBackgroundBlock(nn.Module):
    """INR-GAN block: [conv0] → conv1 (modulated, demodulated, lrelu) and a modulated 4-channel skip ``to_out``.

    The first block has no conv0: its conv1 reads the Fourier features directly, as StyleGAN's 4×4 block
    has one conv. ``num_conv`` w slots are consumed; ``to_out`` reads the slot after them, which the next
    block's first layer shares.
    """

    def __init__(self, in_features: int, width: int, w_dim: int, is_first: bool) -> None:
        super().__init__()
        self.num_conv = 1 if is_first else 2
        if not is_first:
            self.conv0 = ModulatedFullyConnected(in_features, width, w_dim)
        self.conv1 = ModulatedFullyConnected(in_features if is_first else width, width, w_dim)
        self.to_out = ModulatedFullyConnected(width, OUTPUT_CHANNELS, w_dim, demodulate=False, activation=False)

    def forward(self, x: Tensor, ws: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, N, in], ws [B, num_conv + 1, w_dim] → features [B, N, width], skip output [B, N, 4]."""
        if self.num_conv == 2:
            x = self.conv0(x, ws[:, 0])
        x = self.conv1(x, ws[:, self.num_conv - 1])
        return x, self.to_out(x, ws[:, self.num_conv])


class SphereBackground(nn.Module):
    """NeRF++ inverted-sphere background: samples, INR and compositing (see the module docstring)."""

    def __init__(self, cfg: SphereBackgroundConfig, w_dim: int) -> None:
        super().__init__()
        if cfg.num_blocks < 1:
            raise ValueError(f"num_blocks must be ≥ 1, got {cfg.num_blocks}")
        if cfg.num_ws != 2 * cfg.num_blocks:
            raise ValueError(f"{cfg.num_blocks} blocks consume {2 * cfg.num_blocks} w slots, config says {cfg.num_ws}")
        if cfg.num_steps < 2:
            raise ValueError(f"num_steps must be ≥ 2, got {cfg.num_steps}")
        if not 0 < cfg.start <= 1:
            raise ValueError(f"start (the innermost inverse depth) must be in (0, 1], got {cfg.start}")
        self.cfg, self.w_dim = cfg, w_dim
        self.num_ws = cfg.num_ws
        if cfg.posenc_period_len <= 1:
            raise ValueError(f"posenc_period_len must be > 1, got {cfg.posenc_period_len}")
        # The original multiplies the coordinates by L before applying its coefficients; folded into ω here.
        freqs = cfg.posenc_period_len * log_fourier_coefficients(cfg.posenc_period_len)
        self.register_buffer("frequencies", freqs, persistent=False)
        widths = [min(cfg.channel_base // 2 ** (i + 2), cfg.channel_max) for i in range(cfg.num_blocks)]
        in_widths = [2 * COORD_DIM * freqs.numel(), *widths[:-1]]
        self.blocks = nn.ModuleList(
            SphereBackgroundBlock(c_in, c_out, w_dim, is_first=i == 0)
            for i, (c_in, c_out) in enumerate(zip(in_widths, widths, strict=True))
        )

    def inverse_depths(
        self,
        batch_shape: tuple[int, ...],
        jitter: bool,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Inverse depths v per ray, descending from ``start`` to 0. → [*batch_shape, num_steps].

        v = linspace(start, 0, K); with jitter, sample i is uniform in its bin [μ_i, μ_{i−1}] between the
        neighbouring mid-points (half-width bins at both ends), so the samples stay sorted and in [0, start].
        """
        cfg = self.cfg
        neg = coarse_depths(-cfg.start, 0.0, cfg.num_steps, batch_shape, not jitter, generator, device)
        return -neg

    def inr(self, coords: Tensor, ws: Tensor) -> Tensor:
        """coords [B, N, 4] (x', y', z', v), ws [B, num_ws, w_dim] → [B, N, 4] (r, g, b, raw σ)."""
        x = coords[..., None] * self.frequencies.to(coords.dtype)  # [B, N, 4, F]
        x = torch.cat([x.sin(), x.cos()], dim=-1).flatten(-2)  # per coordinate [sin ×F, cos ×F]
        out, slot = None, 0
        for block in self.blocks:
            x, skip = block(x, ws[:, slot : slot + block.num_conv + 1])
            out = skip if out is None else out + skip
            slot += block.num_conv
        return out

    def forward(
        self,
        origins: Tensor,
        directions: Tensor,
        ws: Tensor,
        white_back: bool,
        clamp_mode: str,
        deterministic: bool,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Composited background colour of each ray.

        origins [B, 3]; directions [B, P, 3] (unit); ws [B, num_ws, w_dim] (this module's slots only).
        → color [B, P, 3]. Samples are jittered only when training and not ``deterministic``. Compositing
        uses depths −v (ascending), last interval 1e10, no noise and no density shift; with ``white_back`` the
        background's own missing opacity turns white. Rays are independent, so callers may chunk along P.
        """
        b, p = directions.shape[:2]
        if origins.shape != (b, 3) or directions.shape != (b, p, 3):
            raise ValueError(f"need origins [B, 3] and directions [B, P, 3], got {list(origins.shape)}, "
                             f"{list(directions.shape)}")
        if ws.shape != (b, self.num_ws, self.w_dim):
            raise ValueError(f"ws must be [{b}, {self.num_ws}, {self.w_dim}], got {list(ws.shape)}")
        jitter = self.training and not deterministic
        inv = self.inverse_depths((b, p), jitter, generator, directions.device).to(directions.dtype)
        coords = inverted_sphere_points(origins, directions, inv)
        out = self.inr(coords.reshape(b, -1, COORD_DIM), ws).reshape(b, p, -1, OUTPUT_CHANNELS)
        return composite(
            out[..., :3], out[..., 3], -inv, LAST_DELTA, clamp_mode=clamp_mode, white_back=white_back
        ).color
