"""Tri-plane synthesis backbone: a StyleGAN2 "skip" synthesis network whose output is 3 feature planes.

docs/method.md §1.2. Blocks 4², 8², …, R_p² (R_p = tri-plane resolution); each block after the first doubles the
resolution with a modulated transposed convolution and FIR filter; every block's 1×1 "to-planes" output
is accumulated skip-style. The output [B, 3F (+3), R_p, R_p] is reshaped into planes by the field.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from epigraf.nn.layers import (
    LRELU_GAIN,
    LRELU_SLOPE,
    FullyConnected,
    demodulation_coefficients,
    fir_filter_2d,
    leaky_clamp_,
    modulated_conv2d,
    scale_shift_leaky_clamp_,
    upsample2d,
)

NOISE_MODES = ("random", "const", "none")


def synthesis_channels(resolution: int, channel_base: int, channel_max: int) -> int:
    """Feature channels of the synthesis block at ``resolution``: min(base / res, max)."""
    return min(channel_base // resolution, channel_max)


class SynthesisLayer(nn.Module):
    """Modulated 3×3 convolution (optionally 2× up-sampling) + per-pixel noise + bias + lrelu + clamp."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        up: bool = False,
        use_noise: bool = True,
        conv_clamp: float | None = 256.0,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.resolution, self.up = in_channels, out_channels, resolution, up
        self.conv_clamp = conv_clamp
        self.affine = FullyConnected(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.use_noise = use_noise
        if use_noise:
            self.register_buffer("noise_const", torch.randn(resolution, resolution))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.register_buffer("resample_filter", fir_filter_2d(), persistent=False)

    def forward(self, x: Tensor, w: Tensor, noise_mode: str = "random") -> Tensor:
        """x [B, in, H, W], w [B, w_dim] → [B, out, H', W'] (H' = 2H if up).

        Computes clamp(lrelu(demod·conv + noise + bias)·√2, ±clamp) in as few passes over the (large)
        activations as possible: lrelu(g·y) = g·lrelu(y) for g > 0 folds the gain into one multiply-add
        together with demodulation, bias and constant noise, and clamping to (−clamp/0.2, clamp) before the
        activation equals clamping to ±clamp after it.
        """
        styles = self.affine(w)
        x = modulated_conv2d(x, self.weight, styles, up_filter=self.resample_filter if self.up else None)
        scale = demodulation_coefficients(self.weight, styles) * LRELU_GAIN
        offset = (self.bias * LRELU_GAIN).to(x.dtype)[None, :, None, None]
        noisy = self.use_noise and noise_mode != "none"
        if noisy and noise_mode == "const":
            offset = offset + self.noise_const * (self.noise_strength * LRELU_GAIN)
        noise = None
        if noisy and noise_mode == "random":
            noise = torch.randn(x.shape[0], 1, self.resolution, self.resolution, device=x.device, dtype=x.dtype)
            noise = noise * (self.noise_strength * LRELU_GAIN)
        clamp = math.inf if self.conv_clamp is None else self.conv_clamp
        return scale_shift_leaky_clamp_(x, scale, offset, noise, -clamp / LRELU_SLOPE, clamp)


class ToPlanesLayer(nn.Module):
    """Modulated 1×1 convolution without demodulation (StyleGAN2's toRGB) producing plane features."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, conv_clamp: float | None = 256.0) -> None:
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnected(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1.0 / math.sqrt(in_channels)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        """x [B, in, H, W], w [B, w_dim] → [B, out, H, W]."""
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles).add_(self.bias[None, :, None, None])
        return x if self.conv_clamp is None else leaky_clamp_(x, -self.conv_clamp, self.conv_clamp, slope=1.0)


class SynthesisBlock(nn.Module):
    """One resolution of the skip architecture: [const | up-conv] → conv → to-planes, skip-accumulated."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        plane_channels: int,
        use_noise: bool = True,
        conv_clamp: float | None = 256.0,
    ) -> None:
        super().__init__()
        self.resolution = resolution
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=True,
                                        use_noise=use_noise, conv_clamp=conv_clamp)
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution,
                                    use_noise=use_noise, conv_clamp=conv_clamp)
        self.torgb = ToPlanesLayer(out_channels, plane_channels, w_dim, conv_clamp=conv_clamp)
        self.num_conv = 1 if in_channels == 0 else 2
        self.register_buffer("resample_filter", fir_filter_2d(), persistent=False)

    def forward(self, x: Tensor | None, img: Tensor | None, ws: Tensor, noise_mode: str = "random"
                ) -> tuple[Tensor, Tensor]:
        """x [B, in, H/2, W/2] or None, img [B, P, H/2, W/2] or None, ws [B, num_conv + 1, w_dim]
        → (x [B, out, H, W], img [B, P, H, W])."""
        if x is None:
            x = self.const[None].expand(ws.shape[0], -1, -1, -1)
            x = self.conv1(x, ws[:, 0], noise_mode)
        else:
            x = self.conv0(x, ws[:, 0], noise_mode)
            x = self.conv1(x, ws[:, 1], noise_mode)
        y = self.torgb(x, ws[:, self.num_conv])
        img = y if img is None else upsample2d(img, self.resample_filter).add_(y)
        return x, img


class TriPlaneSynthesis(nn.Module):
    """StyleGAN2 skip synthesis network from 4² to ``resolution``² producing ``plane_channels`` maps."""

    def __init__(
        self,
        w_dim: int,
        resolution: int,
        plane_channels: int,
        channel_base: int = 32768,
        channel_max: int = 512,
        use_noise: bool = True,
        conv_clamp: float | None = 256.0,
    ) -> None:
        super().__init__()
        log2 = int(math.log2(resolution))
        if resolution < 4 or 2**log2 != resolution:
            raise ValueError(f"tri-plane resolution must be a power of two ≥ 4, got {resolution}")
        self.resolutions = [2**i for i in range(2, log2 + 1)]
        self.w_dim = w_dim
        in_ch = 0
        blocks = {}
        for res in self.resolutions:
            out_ch = synthesis_channels(res, channel_base, channel_max)
            blocks[f"b{res}"] = SynthesisBlock(in_ch, out_ch, w_dim, res, plane_channels, use_noise, conv_clamp)
            in_ch = out_ch
        self.blocks = nn.ModuleDict(blocks)
        self.num_ws = sum(b.num_conv for b in self.blocks.values()) + 1

    def forward(self, ws: Tensor, noise_mode: str = "random") -> Tensor:
        """ws [B, num_ws, w_dim] → planes [B, plane_channels, R_p, R_p]."""
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        if ws.ndim != 3 or ws.shape[1] < self.num_ws or ws.shape[2] != self.w_dim:
            raise ValueError(f"ws must be [B, {self.num_ws}, {self.w_dim}], got {list(ws.shape)}")
        x = img = None
        w_idx = 0
        for block in self.blocks.values():
            x, img = block(x, img, ws[:, w_idx : w_idx + block.num_conv + 1], noise_mode)
            w_idx += block.num_conv
        return img
