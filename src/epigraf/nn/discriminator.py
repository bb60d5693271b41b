"""EpiGRAF's patch discriminator: a StyleGAN2 ResNet D that knows where its patch came from (docs/method.md §4).

The network is built for a "virtual" resolution R (the full image) but sees r×r patches: blocks
``b{R}``, ``b{R/2}``, …, ``b8`` keep the widths ``min(channel_base / res, channel_max)`` of a D for R²
inputs, and the first ``log2(R / r)`` of them do not down-sample, so an r×r patch reaches 4×4 at the
epilogue ``b4``. Patch parameters (scale, offset) enter twice:

* hyper-modulation: ``scalar_enc`` embeds (s, o_x, o_y) into 828 dims, ``hyper_mod_mapping`` turns that
  into a code h, and every block's ``conv1`` multiplies its input channels by 1 + tanh(A h);
* projection: ``head_mapping`` maps [class one-hot, patch embedding, camera encoding] to the projection
  vector cmap, and the logit is ⟨features, cmap⟩ / √cmap_dim.

Which switches build what (``DiscriminatorConfig``): ``hyper_mod`` builds the hyper-modulation;
``patch_params_cond`` puts the patch embedding into the projection head; ``c_dim`` > 0 puts the labels
there, ``camera_cond`` the camera encoding. With none of the head inputs the last FC has one output and
there is no projection.

Key names follow the original's state dicts, so a checkpoint converts with
:func:`discriminator_key_map`: every key keeps its name except the original's constant buffers
(``*.resample_filter`` — the normalised [1, 3, 3, 1] filter — ``scalar_enc.fourier_encoder.fourier_coefs``
= π·2^j/1024 and, with Fourier camera features, ``head_mapping.camera_scalar_enc.fourier_encoder.fourier_coefs``
= π·2^j/64), which are recomputed here (non-persistent buffers) and map to ``None``. A converter should
check their values (:func:`epigraf.nn.layers.fir_filter_2d`, :func:`epigraf.nn.layers.log_fourier_coefficients`)
and drop them.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from epigraf.cameras import conditioning_angles
from epigraf.config import DiscriminatorConfig
from epigraf.nn.layers import Conv2dLayer, FullyConnected, MinibatchStd, normalize_2nd_moment

SCALAR_MULTIPLIER = 1000.0
NUM_SCALAR_FREQS = 10
SCALAR_EMBED_DIM = 256
NUM_PATCH_SCALARS = 3  # (scale_x, offset_x, offset_y): scales are square, so scale_y adds nothing
PATCH_EMBED_DIM = NUM_PATCH_SCALARS * (2 * NUM_SCALAR_FREQS + SCALAR_EMBED_DIM)  # 828
NUM_CAMERA_FREQS = 6
HEAD_MAPPING_LAYERS = 2
MAPPING_LR_MULTIPLIER = 0.01
# bfloat16 rather than float16 for the reduced-precision blocks: the training loop does no loss scaling,
# and bf16's float32-sized exponent keeps small R1 / adversarial gradients from underflowing.
REDUCED_PRECISION_DTYPE = torch.bfloat16
_SKIP_GAIN = math.sqrt(0.5)  # skip + residual keep unit variance


class PatchParamsLike(Protocol):
    """Anything with ``scales`` [B, 2] and ``offsets`` [B, 2] in fractions of the image side."""

    scales: Tensor
    offsets: Tensor


def discriminator_key_map(original_key: str) -> str | None:
    """Our state-dict key for an original D key; ``None`` for the constant buffers we recompute."""
    if original_key.endswith(("resample_filter", "fourier_encoder.fourier_coefs")):
        return None
    return original_key


def fourier_coefficients(num_freqs: int = NUM_SCALAR_FREQS) -> Tensor:
    """Patch-scalar frequencies ω_j = π·2^j / 1024, j < num_freqs (applied to 1000·v). [num_freqs]."""
    return torch.tensor([math.pi * 2.0**j / 1024.0 for j in range(num_freqs)], dtype=torch.float32)


def discriminator_channels(resolution: int, channel_base: int, channel_max: int) -> int:
    """Width of the D block at (virtual) ``resolution``: min(base / res, max)."""
    return min(channel_base // resolution, channel_max)


class ScalarEncoder(nn.Module):
    """Embeds scalars v ∈ [0, 1]: per scalar [sin(ω·1000v) ×10, cos ×10, table row round(1000v) ×256].

    One 1001×256 table is shared by all scalars; rounding is torch.round (half to even) on the float32
    product, as the original. Output [n, k·276], scalars in input order.
    """

    def __init__(self, num_freqs: int = NUM_SCALAR_FREQS, embed_dim: int = SCALAR_EMBED_DIM,
                 multiplier: float = SCALAR_MULTIPLIER) -> None:
        super().__init__()
        self.multiplier = multiplier
        self.num_rows = int(multiplier) + 1
        self.const_embed = nn.Embedding(self.num_rows, embed_dim)
        self.register_buffer("fourier_coefs", fourier_coefficients(num_freqs), persistent=False)

    def output_dim(self, num_scalars: int) -> int:
        return num_scalars * (2 * self.fourier_coefs.numel() + self.const_embed.embedding_dim)

    def forward(self, x: Tensor) -> Tensor:
        """x [n, k] in [0, 1] → [n, k·(2·num_freqs + embed_dim)]."""
        if x.ndim != 2:
            raise ValueError(f"scalar encoder input must be [n, k], got {list(x.shape)}")
        x = x.float() * self.multiplier
        idx = torch.round(x).long()
        if bool(((idx < 0) | (idx >= self.num_rows)).any()):
            raise ValueError(f"scalars must lie in [0, 1] (patch scales and offsets), got range "
                             f"[{x.min().item() / self.multiplier}, {x.max().item() / self.multiplier}]")
        args = x[:, :, None] * self.fourier_coefs  # [n, k, F]
        feats = torch.cat([args.sin(), args.cos(), self.const_embed(idx)], dim=2)
        return feats.flatten(1)


class ConditioningMapping(nn.Module):
    """Mapping network without a latent: embed (FC, lr 1) → 2nd-moment norm → lrelu FCs (lr 0.01).

    Used twice: ``hyper_mod_mapping`` (patch embedding → hyper code h) and ``head_mapping``
    (head conditioning → projection vector cmap). Layers are named embed, fc0, fc1, … as the original.
    """

    def __init__(self, in_features: int, out_features: int, num_layers: int = HEAD_MAPPING_LAYERS,
                 lr_multiplier: float = MAPPING_LR_MULTIPLIER) -> None:
        super().__init__()
        self.in_features, self.out_features, self.num_layers = in_features, out_features, num_layers
        self.embed = FullyConnected(in_features, out_features)
        for i in range(num_layers):
            setattr(self, f"fc{i}", FullyConnected(out_features, out_features, activation=True,
                                                   lr_multiplier=lr_multiplier))

    def forward(self, c: Tensor) -> Tensor:
        """c [B, in] → [B, out]."""
        x = normalize_2nd_moment(self.embed(c))
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        return x


class HyperModulatedConv2d(Conv2dLayer):
    """A :class:`Conv2dLayer` whose input channels are scaled per sample by m = 1 + tanh(A h).

    Scaling the activations equals scaling the weights along the input axis per sample, but keeps one
    shared convolution. No demodulation. ``affine`` (A) starts at bias 0, i.e. m ≈ 1 + tanh(noise).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, hyper_dim: int,
                 **kwargs) -> None:
        super().__init__(in_channels, out_channels, kernel_size, **kwargs)
        self.affine = FullyConnected(hyper_dim, in_channels)

    def multiplier(self, h: Tensor) -> Tensor:
        """Per-sample, per-input-channel factor in (0, 2). h [B, hyper_dim] → [B, in_channels]."""
        return 1.0 + torch.tanh(self.affine(h))

    def forward(self, x: Tensor, h: Tensor, gain: float = 1.0) -> Tensor:
        """x [B, in, H, W], h [B, hyper_dim] → [B, out, H', W']."""
        m = self.multiplier(h.float()).to(x.dtype)
        return super().forward(x * m[:, :, None, None], gain=gain)


class DiscriminatorBlock(nn.Module):
    """ResNet block: [fromrgb] → conv0 3×3 → conv1 3×3 (↓2 or stride 1, hyper-modulated) + skip 1×1.

    ``fromrgb`` is built in every block because the original's state dicts hold one per block; only the
    first block (``is_first``) runs it, the others receive features from the block before.
    """

    def __init__(
        self,
        resolution: int,
        tmp_channels: int,
        out_channels: int,
        is_first: bool,
        down: bool,
        hyper_dim: int | None,
        img_channels: int = 3,
        conv_clamp: float | None = 256.0,
        fp16_eligible: bool = False,
    ) -> None:
        super().__init__()
        self.resolution, self.is_first, self.down = resolution, is_first, down
        self.tmp_channels, self.out_channels = tmp_channels, out_channels
        self.img_channels, self.fp16_eligible = img_channels, fp16_eligible
        self.fromrgb = Conv2dLayer(img_channels, tmp_channels, 1, conv_clamp=conv_clamp)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, conv_clamp=conv_clamp)
        if hyper_dim is None:
            self.conv1 = Conv2dLayer(tmp_channels, out_channels, 3, down=down, conv_clamp=conv_clamp)
        else:
            self.conv1 = HyperModulatedConv2d(tmp_channels, out_channels, 3, hyper_dim,
                                              down=down, conv_clamp=conv_clamp)
        # StyleGAN2's skip path is linear and unclamped.
        self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, activation=False, down=down)

    def forward(self, x: Tensor | None, img: Tensor | None, h: Tensor | None = None,
                reduced_precision: bool = False) -> Tensor:
        """x [B, tmp, H, W] (None in the first block), img [B, C, H, W] (first block only), h [B, hyper_dim]
        → [B, out, H', W'] with H' = H/2 if ``down``. ``reduced_precision`` runs the block in bfloat16
        when it is eligible and on CUDA."""
        src = img if self.is_first else x
        if src is None:
            raise ValueError(f"block b{self.resolution} needs {'img' if self.is_first else 'x'}")
        dtype = (REDUCED_PRECISION_DTYPE if reduced_precision and self.fp16_eligible and src.is_cuda
                 else torch.float32)
        x = self.fromrgb(img.to(dtype)) if self.is_first else x.to(dtype)
        y = self.skip(x, gain=_SKIP_GAIN)
        x = self.conv0(x)
        if isinstance(self.conv1, HyperModulatedConv2d):
            if h is None:
                raise ValueError(f"block b{self.resolution} is hyper-modulated and needs the hyper code h")
            x = self.conv1(x, h, gain=_SKIP_GAIN)
        else:
            x = self.conv1(x, gain=_SKIP_GAIN)
        return y + x


class DiscriminatorEpilogue(nn.Module):
    """4×4 head: minibatch-stddev → conv 3×3 → FC → FC to cmap_dim (or 1) → projection on cmap."""

    def __init__(self, in_channels: int, cmap_dim: int, resolution: int = 4, mbstd_group_size: int = 4,
                 mbstd_num_channels: int = 1, conv_clamp: float | None = 256.0) -> None:
        super().__init__()
        self.in_channels, self.cmap_dim, self.resolution = in_channels, cmap_dim, resolution
        self.mbstd = MinibatchStd(mbstd_group_size, mbstd_num_channels)
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, 3, conv_clamp=conv_clamp)
        self.fc = FullyConnected(in_channels * resolution**2, in_channels, activation=True)
        self.out = FullyConnected(in_channels, cmap_dim if cmap_dim > 0 else 1)

    def forward(self, x: Tensor, cmap: Tensor | None = None) -> Tensor:
        """x [B, C, 4, 4], cmap [B, cmap_dim] (None without conditioning) → logits [B]."""
        x = self.conv(self.mbstd(x.float()))
        x = self.out(self.fc(x.flatten(1)))
        if self.cmap_dim == 0:
            return x[:, 0]
        if cmap is None:
            raise ValueError("this epilogue projects onto cmap, which is missing")
        return (x * cmap).sum(dim=1) / math.sqrt(self.cmap_dim)


class CameraEncoder(nn.Module):
    """Yaw and pitch of the D camera conditioning, normalised to [−0.5, 0.5] (``conditioning_angles``).

    Raw: the 2 normalised angles. Fourier (default): per angle [sin(π·2^j·a) for j < 6, cos(…)] → 24 dims;
    the original's layout (its coefficients π·2^j/64 on 64·a; fixture set ``condfourier``). In training mode, noise of
    ``noise_std`` × the batch std of each angle is added to the angles, then dropout with inverted scaling
    is applied to the encoding.
    """

    def __init__(self, raw: bool = False, drop_p: float = 0.0, noise_std: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop_p < 1.0:
            raise ValueError(f"camera_cond_drop_p must be in [0, 1), got {drop_p}")
        self.raw, self.drop_p, self.noise_std = raw, drop_p, noise_std
        freqs = torch.tensor([math.pi * 2.0**j for j in range(NUM_CAMERA_FREQS)], dtype=torch.float32)
        self.register_buffer("freqs", freqs, persistent=False)
        self.output_dim = 2 if raw else 2 * 2 * NUM_CAMERA_FREQS

    def forward(self, angles: Tensor) -> Tensor:
        """angles [B, 3] (yaw, pitch, roll) in radians → [B, output_dim]."""
        a = conditioning_angles(angles.float())
        if self.training and self.noise_std > 0 and a.shape[0] > 1:
            a = a + torch.randn_like(a) * (self.noise_std * a.std(dim=0, keepdim=True))
        if not self.raw:
            args = a[:, :, None] * self.freqs  # [B, 2, F]
            a = torch.cat([args.sin(), args.cos()], dim=2).flatten(1)
        return F.dropout(a, self.drop_p, self.training) if self.drop_p > 0 else a


class Discriminator(nn.Module):
    """EpiGRAF patch discriminator: images [B, C, r, r] + labels + patch params (+ camera) → logits [B], where C
    is ``cfg.img_channels``: RGB, or RGB and alpha.

    ``use_fp16`` (off by default) runs the blocks of virtual resolution ≥ 2^(log2 R + 1 − num_fp16_res)
    in reduced precision (bfloat16, see ``REDUCED_PRECISION_DTYPE``) on CUDA only; the mappings and the
    epilogue always run in float32, and CPU is always float32.
    """

    def __init__(self, cfg: DiscriminatorConfig) -> None:
        super().__init__()
        r, big_r = cfg.input_resolution, cfg.image_resolution
        if r < 4 or 2 ** int(math.log2(r)) != r:
            raise ValueError(f"D input resolution must be a power of two ≥ 4, got {r}")
        if big_r < r or 2 ** int(round(math.log2(big_r / r))) * r != big_r:
            raise ValueError(f"image resolution {big_r} must be the patch resolution {r} "
                             "times a power of two")
        self.cfg = cfg
        self.input_resolution, self.virtual_resolution = r, big_r
        self.c_dim = cfg.c_dim
        self.use_fp16 = False
        self.uses_patch_params = cfg.hyper_mod or cfg.patch_params_cond

        def channels(res: int) -> int:
            return discriminator_channels(res, cfg.channel_base, cfg.channel_max)

        if self.uses_patch_params:
            self.scalar_enc = ScalarEncoder()
        if cfg.hyper_mod:
            self.hyper_mod_mapping = ConditioningMapping(PATCH_EMBED_DIM, cfg.hyper_mod_dim)
        self.camera_encoder = (
            CameraEncoder(cfg.camera_cond_raw, cfg.camera_cond_drop_p, cfg.camera_cond_noise_std)
            if cfg.camera_cond else None
        )

        log2_big_r = int(math.log2(big_r))
        fp16_resolution = 2 ** (log2_big_r + 1 - cfg.num_fp16_res)
        self.block_resolutions = [2**i for i in range(log2_big_r, 2, -1)]
        for i, res in enumerate(self.block_resolutions):
            block = DiscriminatorBlock(
                res, channels(res), channels(res // 2), is_first=i == 0,
                down=i >= cfg.num_additional_start_blocks,
                hyper_dim=cfg.hyper_mod_dim if cfg.hyper_mod else None,
                img_channels=cfg.img_channels, conv_clamp=cfg.conv_clamp, fp16_eligible=res >= fp16_resolution,
            )
            setattr(self, f"b{res}", block)

        head_dim = (cfg.c_dim + (PATCH_EMBED_DIM if cfg.patch_params_cond else 0)
                    + (self.camera_encoder.output_dim if self.camera_encoder is not None else 0))
        self.cmap_dim = channels(4) if head_dim > 0 else 0
        if head_dim > 0:
            self.head_mapping = ConditioningMapping(head_dim, self.cmap_dim)
        self.b4 = DiscriminatorEpilogue(channels(4), self.cmap_dim, mbstd_group_size=cfg.mbstd_group_size,
                                        mbstd_num_channels=cfg.mbstd_num_channels, conv_clamp=cfg.conv_clamp)

    @property
    def blocks(self) -> list[DiscriminatorBlock]:
        return [getattr(self, f"b{res}") for res in self.block_resolutions]

    def embed_patch_params(self, patch_params: PatchParamsLike) -> Tensor:
        """(scale_x, offset_x, offset_y) → the 828-d patch embedding. [B, 828]."""
        scalars = torch.stack([patch_params.scales[:, 0], patch_params.offsets[:, 0],
                               patch_params.offsets[:, 1]], dim=1)
        return self.scalar_enc(scalars)

    def _check_inputs(self, images: Tensor, c: Tensor | None, patch_params: PatchParamsLike | None,
                      camera_angles: Tensor | None) -> None:
        r = self.input_resolution
        channels = self.cfg.img_channels
        if images.ndim != 4 or images.shape[1:] != (channels, r, r):
            raise ValueError(f"images must be [B, {channels}, {r}, {r}] (D input resolution r = {r}), "
                             f"got {list(images.shape)}")
        b = images.shape[0]
        if self.c_dim > 0:
            if c is None:
                raise ValueError(f"this discriminator is conditional (c_dim = {self.c_dim}) and needs c")
            if c.shape != (b, self.c_dim):
                raise ValueError(f"c must be [{b}, {self.c_dim}], got {list(c.shape)}")
        elif c is not None and c.numel() > 0:
            raise ValueError(f"this discriminator is unconditional (c_dim = 0) but got c {list(c.shape)}")
        if self.uses_patch_params:
            if patch_params is None:
                raise ValueError("this discriminator is patch-aware and needs patch_params")
            for name in ("scales", "offsets"):
                t = getattr(patch_params, name)
                if t.shape != (b, 2):
                    raise ValueError(f"patch_params.{name} must be [{b}, 2] (batch of the images), "
                                     f"got {list(t.shape)}")
        if self.camera_encoder is not None:
            if camera_angles is None:
                raise ValueError("this discriminator is camera-conditioned (camera_cond) "
                                 "and needs camera_angles")
            if camera_angles.ndim != 2 or camera_angles.shape[0] != b or camera_angles.shape[1] < 2:
                raise ValueError(f"camera_angles must be [{b}, 3] (yaw, pitch, roll), "
                                 f"got {list(camera_angles.shape)}")
        g = min(self.b4.mbstd.group_size, b)
        if b % g != 0:
            raise ValueError(f"batch {b} is not divisible by the minibatch-stddev group size {g}")

    def forward(self, images: Tensor, c: Tensor | None, patch_params: PatchParamsLike | None,
                camera_angles: Tensor | None = None) -> Tensor:
        """images [B, C, r, r] in [−1, 1], c [B, c_dim] or None, patch_params (scales, offsets [B, 2]),
        camera_angles [B, 3] (only used with camera_cond) → logits [B]."""
        self._check_inputs(images, c, patch_params, camera_angles)
        patch_embed = self.embed_patch_params(patch_params) if self.uses_patch_params else None
        h = self.hyper_mod_mapping(patch_embed) if self.cfg.hyper_mod else None
        reduced = self.use_fp16 and images.is_cuda
        x = None
        for block in self.blocks:
            x = block(x, images, h, reduced_precision=reduced)
        cmap = None
        if self.cmap_dim > 0:
            parts = []
            if self.c_dim > 0:
                parts.append(c.float())
            if self.cfg.patch_params_cond:
                parts.append(patch_embed)
            if self.camera_encoder is not None:
                parts.append(self.camera_encoder(camera_angles))
            cmap = self.head_mapping(torch.cat(parts, dim=1) if len(parts) > 1 else parts[0])
        return self.b4(x, cmap)
