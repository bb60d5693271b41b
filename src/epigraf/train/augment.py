"""Adaptive discriminator augmentation (ADA), written from Karras et al., "Training Generative Adversarial
Networks with Limited Data" (NeurIPS 2020), appendix B, and EpiGRAF's use of it (docs/method.md §5.7).

:class:`AugmentPipe` applies the paper's 'bgc' transforms in the paper's order, each to each sample
independently with probability ``p · multiplier``:

* pixel blitting — x-flip, rotation by a multiple of 90°, integer translation by U(−0.125, 0.125) of the
  image size; composed into one integer matrix and applied exactly (a gather with mirror padding);
* general geometric — isotropic scaling (lognormal, std 0.2·ln 2), pre-rotation U(−π, π), anisotropic
  scaling (lognormal, std 0.2·ln 2), post-rotation, fractional translation N(0, 0.125²) of the image size;
  the two rotations each fire with probability 1 − sqrt(1 − p) so that "some rotation" has probability p;
  composed into one matrix and applied by one antialiased resampling (:func:`warp_affine`);
* colour — brightness (add N(0, 0.2²)), contrast (scale by lognormal, std 0.5·ln 2), luma flip, hue rotation
  U(−π, π) about the grey axis, saturation (lognormal, std ln 2); composed into one 4×4 matrix on (r, g, b, 1).

Brightness and contrast act about 0, the mid-grey of images in [−1, 1], as in the paper's colour matrix.
EpiGRAF's default is this set with multiplier 1 except x-flip 0: a flipped patch would no longer match its
camera. The paper's image-space filtering, additive noise and cutout groups are not implemented.

Simplifications and choices relative to the paper:

* Resampling: the paper up-samples 2× with a sym6 wavelet filter, warps bilinearly, and down-samples with the
  same filter. :func:`warp_affine` does the same with an interpolating Kaiser-windowed-sinc half-band filter
  (23 taps: the centre and ``_HALFBAND_TAPS`` odd ones on each side are non-zero). An identity warp passes
  frequencies up to 0.3 cycles/pixel within ±0.1 % (−0.6 % at 0.35, −10 % at 0.4, −35 % at 0.45, −50 % at
  Nyquist), so smooth images come back to ~1e-3 more than 12 pixels from the border and to a few 1e-2 at it,
  where mirroring adds a kink the filter softens; noise-like content near Nyquist is softened. Bilinear
  sampling of the 2× image adds a little blur for non-integer shifts. Both filters are applied as small dense
  matrices per axis, so a longer filter would cost nothing more per pixel, only more ringing at the borders.
* Padding: mirror about the border pixels (the edge is not repeated), to any distance. No explicit padding
  is needed: with a symmetric filter, up-sampling commutes with mirroring about the border samples, so
  ``grid_sample``'s reflection mode on the up-sampled image equals up-sampling the mirror-tiled image.
* Samples for which no transform of a group fired are not touched by that group, so they stay bit-identical
  (the paper filters the whole batch whenever the geometric group is enabled). Pixel blitting is applied as
  an exact gather before the general geometric warp instead of being folded into its matrix: the result is
  the same, and samples with only blit transforms stay lossless.

:class:`AdaptiveP` is the paper's heuristic for p: r_t = E[sign(D(real))] over ``interval`` iterations,
p ← max(0, p + sign(r_t − target) · batch·interval / (speed_kimg·1000)).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

# Half-band filter: non-zero taps at odd offsets ±1, ±3, …, ±(2·_HALFBAND_TAPS − 1) of the 2× grid.
_HALFBAND_TAPS = 6
_KAISER_BETA = 6.0
_DOWN_SUPPORT = 2 * _HALFBAND_TAPS - 1  # 2×-grid samples the low-pass reads on each side


def _halfband_taps() -> np.ndarray:
    """Kaiser-windowed sinc at the odd offsets −(2T−1) … 2T−1, normalised to sum 1. [2T], T = _HALFBAND_TAPS."""
    offsets = np.arange(-(2 * _HALFBAND_TAPS - 1), 2 * _HALFBAND_TAPS, 2)
    taps = np.sinc(offsets / 2) * np.kaiser(4 * _HALFBAND_TAPS + 1, _KAISER_BETA)[offsets + 2 * _HALFBAND_TAPS]
    return taps / taps.sum()


def _reflect_index(index: Tensor, size: int) -> Tensor:
    """Mirror integer indices into [0, size) without repeating the edge (… 2 1 | 0 1 2 … size−1 | size−2 …)."""
    if size == 1:
        return torch.zeros_like(index)
    period = 2 * size - 2
    index = index.remainder(period)
    return torch.where(index < size, index, period - index)


def _reflect_columns(matrix: np.ndarray, first: int, size: int) -> np.ndarray:
    """Fold a matrix whose columns are samples first, first + 1, … of a mirrored signal onto [0, size)."""
    folded = np.zeros((matrix.shape[0], size))
    index = _reflect_index(torch.arange(first, first + matrix.shape[1]), size).numpy()
    np.add.at(folded.T, index, matrix.T)
    return folded


@functools.lru_cache(maxsize=16)
def _upsample_matrix(n: int) -> Tensor:
    """Interpolating 2× up-sampling of a mirrored length-n signal as a matrix. [2n − 1, n], float32 on the CPU.

    Row 2j is sample j itself; row 2j + 1 is the half-band interpolation between samples j and j + 1.
    """
    taps = _halfband_taps()
    t = _HALFBAND_TAPS
    dense = np.zeros((2 * n - 1, n + 2 * t))  # column c is sample c − t of the mirrored signal
    rows = np.arange(n)
    dense[2 * rows, rows + t] = 1
    for k, tap in enumerate(taps):  # the midpoint after sample j reads samples j − t + 1 … j + t
        dense[2 * rows[:-1] + 1, rows[:-1] + k + 1] = tap
    return torch.from_numpy(_reflect_columns(dense, -t, n)).float()


@functools.lru_cache(maxsize=16)
def _downsample_matrix(n: int) -> Tensor:
    """Half-band low-pass and 2× decimation as a matrix. [n, 2n − 1 + 2·_DOWN_SUPPORT], float32 on the CPU.

    Input sample q sits at output coordinate (q − _DOWN_SUPPORT) / 2; output i is centred on q = 2i + _DOWN_SUPPORT.
    """
    kernel = np.zeros(2 * _DOWN_SUPPORT + 1)
    kernel[_DOWN_SUPPORT] = 0.5
    kernel[0::2] = _halfband_taps() / 2
    dense = np.zeros((n, 2 * n - 1 + 2 * _DOWN_SUPPORT))
    for i in range(n):
        dense[i, 2 * i : 2 * i + len(kernel)] = kernel
    return torch.from_numpy(dense).float()


_BILINEAR, _REFLECTION = 0, 2  # aten's enums for grid_sample's mode and padding_mode


class _ReflectSample(torch.autograd.Function):
    """Bilinear ``grid_sample`` (reflection padding, align_corners) whose image gradient is differentiable again.

    R1 differentiates D's input gradient, which runs back through this resampling; PyTorch's own
    ``grid_sampler_2d_backward`` has no derivative. For a fixed grid the sampling is linear in the image, so
    its backward is the transposed sampling (:class:`_ReflectSampleTranspose`), whose backward is the sampling
    again. The grid gets no gradient: augmentation grids are drawn, not learnt.
    """

    @staticmethod
    def forward(ctx: Any, images: Tensor, grid: Tensor) -> Tensor:
        ctx.save_for_backward(images, grid)
        return torch.grid_sampler_2d(images, grid, _BILINEAR, _REFLECTION, True)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        images, grid = ctx.saved_tensors
        return _ReflectSampleTranspose.apply(grad, images, grid), None


class _ReflectSampleTranspose(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, grad: Tensor, images: Tensor, grid: Tensor) -> Tensor:
        ctx.save_for_backward(grid)
        # ``images`` only supplies the input's shape to aten: bilinear weights do not depend on its values.
        grad_images, _ = torch.ops.aten.grid_sampler_2d_backward(
            grad, images, grid, _BILINEAR, _REFLECTION, True, [True, False])
        return grad_images

    @staticmethod
    def backward(ctx: Any, grad_grad: Tensor) -> tuple[Tensor, None, None]:
        (grid,) = ctx.saved_tensors
        return _ReflectSample.apply(grad_grad, grid), None, None


def warp_affine(images: Tensor, matrix: Tensor) -> Tensor:
    """Resample images under per-sample affine maps with mirror padding and antialiasing.

    Args:
        images: [B, C, H, W] with H, W ≥ 2.
        matrix: [B, 3, 3] homogeneous map from output to source coordinates, both in pixel units centred on the
            image centre (x right, y down; pixel (i, j) sits at (j − (W−1)/2, i − (H−1)/2)). Any device.

    Returns:
        [B, C, H, W]: up-sample 2× with the half-band filter, sample bilinearly at 2× the output resolution,
        low-pass and decimate. The identity map returns the image low-passed twice by the half-band filter
        (see the module docstring for its response and the border error).
    """
    b, c, h, w = images.shape
    if h < 2 or w < 2:
        raise ValueError(f"warp_affine needs images of at least 2×2 pixels, got {h}×{w}")
    device, dtype = images.device, images.dtype
    # Up-sampling commutes with mirroring about the border samples (the filter is symmetric), so the
    # up-sampled image mirrored by grid_sample's reflection mode equals the up-sampled infinite mirror
    # tiling: no explicit padding, whatever the maps reach.
    up = _upsample_matrix(h).to(device, dtype) @ images @ _upsample_matrix(w).to(device, dtype).T

    d = _DOWN_SUPPORT
    # Output coordinates at 2× resolution, with d extra samples each side for the decimation filter.
    ys = (torch.arange(2 * h - 1 + 2 * d, device=device, dtype=torch.float32) - d) / 2 - (h - 1) / 2
    xs = (torch.arange(2 * w - 1 + 2 * d, device=device, dtype=torch.float32) - d) / 2 - (w - 1) / 2
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    points = torch.stack([grid_x, grid_y, torch.ones_like(grid_x)], dim=-1)  # [2H−1+2d, 2W−1+2d, 3]
    source = torch.einsum("bij,yxj->byxi", matrix.to(device, torch.float32)[:, :2], points)
    # Centred source coordinate s is pixel index s + (n−1)/2, i.e. align_corners=True coordinate 2s/(n−1).
    grid = source * torch.tensor([2 / (w - 1), 2 / (h - 1)], device=device)
    sampled = _ReflectSample.apply(up, grid.to(dtype))

    return _downsample_matrix(h).to(device, dtype) @ sampled @ _downsample_matrix(w).to(device, dtype).T


def blit(images: Tensor, matrix: Tensor) -> Tensor:
    """Exact pixel permutation with mirror padding, for maps that send pixel centres to pixel centres.

    Args:
        images: [B, C, H, W].
        matrix: [B, 3, 3] output → source map in the centred pixel coordinates of :func:`warp_affine` whose linear
            part is a signed permutation (flips, multiples of 90°) and whose translation is whole pixels
            (a half pixel more per axis where a 90° turn meets sides of different parity). Any device.

    Returns:
        [B, C, H, W], every output pixel copied from its (rounded, mirrored) source pixel.
    """
    b, c, h, w = images.shape
    if not bool(((matrix[:, 0, 0] == 0) ^ (matrix[:, 0, 1] == 0)).all()):
        raise ValueError("blit needs matrices whose linear part is a signed permutation")
    m = matrix.to(images.device, torch.float32)
    xs = torch.arange(w, device=images.device, dtype=torch.float32) - (w - 1) / 2
    ys = torch.arange(h, device=images.device, dtype=torch.float32) - (h - 1) / 2

    def source_index(linear: Tensor, coords: Tensor, offset: Tensor, centre: float, size: int) -> Tensor:
        return _reflect_index(torch.round(linear[:, None] * coords + offset[:, None] + centre).long(), size)

    # Each source coordinate depends on one output coordinate only, so the indices are built per row and
    # column ([B, H] and [B, W]) and only combined at full size.
    col_from_x = source_index(m[:, 0, 0], xs, m[:, 0, 2], (w - 1) / 2, w)[:, None, :]
    col_from_y = source_index(m[:, 0, 1], ys, m[:, 0, 2], (w - 1) / 2, w)[:, :, None]
    row_from_y = source_index(m[:, 1, 1], ys, m[:, 1, 2], (h - 1) / 2, h)[:, :, None]
    row_from_x = source_index(m[:, 1, 0], xs, m[:, 1, 2], (h - 1) / 2, h)[:, None, :]
    swapped = (m[:, 0, 0] == 0)[:, None, None]
    index = torch.where(swapped, row_from_x * w + col_from_y, row_from_y * w + col_from_x)  # [B, H, W]
    index = index.reshape(b, 1, h * w).expand(b, c, h * w)
    return images.reshape(b, c, h * w).gather(2, index).reshape(b, c, h, w)


def apply_color(images: Tensor, matrix: Tensor) -> Tensor:
    """Apply per-sample colour matrices acting on (r, g, b, 1).

    Args:
        images: [B, 3, H, W] RGB, or [B, 1, H, W] grey (transformed as (g, g, g) and averaged back).
        matrix: [B, 4, 4] on any device.

    Returns:
        [B, C, H, W].
    """
    matrix = matrix.to(images.device, images.dtype)
    if images.shape[1] == 3:
        return torch.einsum("bij,bjhw->bihw", matrix[:, :3, :3], images) + matrix[:, :3, 3, None, None]
    if images.shape[1] == 1:
        gain = matrix[:, :3, :3].sum(dim=2).mean(dim=1)
        return images * gain[:, None, None, None] + matrix[:, :3, 3].mean(dim=1)[:, None, None, None]
    raise ValueError(f"colour transforms need 1 or 3 channels, got {images.shape[1]}")


def _on_subset(images: Tensor, active: Tensor, matrix: Tensor, transform: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """transform(images[active], matrix[active]) written back into images; untouched samples stay bit-identical.

    ``active`` [B] bool and ``matrix`` [B, …] live on the parameter device; images on any device.
    """
    if not bool(active.any()):
        return images
    if bool(active.all()):
        return transform(images, matrix)
    index = active.nonzero().squeeze(1)
    device_index = index.to(images.device)
    return images.index_copy(0, device_index, transform(images.index_select(0, device_index), matrix[index]))


def _translate(tx: Tensor, ty: Tensor) -> Tensor:
    """[B] offsets → [B, 3, 3]."""
    m = torch.eye(3, device=tx.device).repeat(tx.shape[0], 1, 1)
    m[:, 0, 2], m[:, 1, 2] = tx, ty
    return m


def _scale(sx: Tensor, sy: Tensor) -> Tensor:
    """[B] factors → [B, 3, 3]."""
    m = torch.eye(3, device=sx.device).repeat(sx.shape[0], 1, 1)
    m[:, 0, 0], m[:, 1, 1] = sx, sy
    return m


def _rotate(cos: Tensor, sin: Tensor) -> Tensor:
    """[B] cosine and sine → [B, 3, 3] rotation (counter-clockwise on screen, since y points down)."""
    m = torch.eye(3, device=cos.device).repeat(cos.shape[0], 1, 1)
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = cos, -sin, sin, cos
    return m


class _Draws:
    """Per-sample random draws on one device from one generator (None: the global RNG)."""

    def __init__(self, batch: int, generator: torch.Generator | None) -> None:
        self.batch = batch
        self.generator = generator
        self.device = generator.device if generator is not None else torch.device("cpu")

    def gate(self, probability: float) -> Tensor:
        """[B] bool, each True with the given probability."""
        return torch.rand(self.batch, generator=self.generator, device=self.device) < probability

    def uniform(self, low: float, high: float) -> Tensor:
        return low + (high - low) * torch.rand(self.batch, generator=self.generator, device=self.device)

    def normal(self, std: float) -> Tensor:
        return std * torch.randn(self.batch, generator=self.generator, device=self.device)

    def integer(self, high: int) -> Tensor:
        """[B] int64 uniform in [0, high)."""
        return torch.randint(high, (self.batch,), generator=self.generator, device=self.device)


class AugmentPipe(nn.Module):
    """ADA's 'bgc' augmentations, each applied per sample with probability ``p · multiplier``.

    The multipliers (``xflip`` … ``saturation``) default to EpiGRAF's choice: 1 for all, 0 for x-flip. The
    remaining arguments are the paper's strengths. ``p`` is a scalar buffer (saved in state dicts) that the
    training loop sets, e.g. from :class:`AdaptiveP`.
    """

    def __init__(
        self,
        *,
        xflip: float = 0.0,
        rotate90: float = 1.0,
        xint: float = 1.0,
        scale: float = 1.0,
        rotate: float = 1.0,
        aniso: float = 1.0,
        xfrac: float = 1.0,
        brightness: float = 1.0,
        contrast: float = 1.0,
        lumaflip: float = 1.0,
        hue: float = 1.0,
        saturation: float = 1.0,
        xint_max: float = 0.125,
        scale_std: float = 0.2,
        rotate_max: float = 1.0,
        aniso_std: float = 0.2,
        xfrac_std: float = 0.125,
        brightness_std: float = 0.2,
        contrast_std: float = 0.5,
        hue_max: float = 1.0,
        saturation_std: float = 1.0,
    ) -> None:
        super().__init__()
        self.xflip, self.rotate90, self.xint = xflip, rotate90, xint
        self.scale, self.rotate, self.aniso, self.xfrac = scale, rotate, aniso, xfrac
        self.brightness, self.contrast, self.lumaflip = brightness, contrast, lumaflip
        self.hue, self.saturation = hue, saturation
        self.xint_max, self.scale_std, self.rotate_max = xint_max, scale_std, rotate_max
        self.aniso_std, self.xfrac_std = aniso_std, xfrac_std
        self.brightness_std, self.contrast_std = brightness_std, contrast_std
        self.hue_max, self.saturation_std = hue_max, saturation_std
        self.register_buffer("p", torch.zeros([]))

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Augment a batch.

        Args:
            images: [B, C, H, W], float, roughly in [−1, 1]; C must be 1 or 3 when colour transforms are on.
            generator: source of all random draws (its device is where they are drawn); None uses the global
                CPU generator.

        Returns:
            [B, C, H, W], differentiable w.r.t. ``images`` (also twice, for R1 through the pipe). With p = 0 the
            input tensor itself; samples no transform fired for are bit-identical to their input.
        """
        p = float(self.p)
        if p <= 0:
            return images
        color_on = any(m > 0 for m in (self.brightness, self.contrast, self.lumaflip, self.hue, self.saturation))
        if color_on and images.shape[1] not in (1, 3):
            raise ValueError(f"colour transforms need 1 or 3 channels, got {images.shape[1]}")
        draws = _Draws(images.shape[0], generator)
        h, w = images.shape[-2:]

        matrix, active = self._blit_matrix(draws, p, h, w)
        images = _on_subset(images, active, matrix, blit)
        matrix, active = self._geometric_matrix(draws, p, h, w)
        images = _on_subset(images, active, matrix, warp_affine)
        matrix, active = self._color_matrix(draws, p)
        return _on_subset(images, active, matrix, apply_color)

    def _blit_matrix(self, draws: _Draws, p: float, h: int, w: int) -> tuple[Tensor, Tensor]:
        """Output → source map [B, 3, 3] of x-flip, rotate-90 and integer translation, and which samples moved [B]."""
        inverse = torch.eye(3, device=draws.device).repeat(draws.batch, 1, 1)
        active = torch.zeros(draws.batch, dtype=torch.bool, device=draws.device)
        # Each step right-multiplies the inverse of the next forward transform: (T_n ⋯ T_1)⁻¹ = T_1⁻¹ ⋯ T_n⁻¹.
        if self.xflip > 0:
            on = draws.gate(p * self.xflip) & (draws.integer(2) == 1)
            inverse = inverse @ _scale(1 - 2 * on.float(), torch.ones(draws.batch, device=draws.device))
            active |= on
        if self.rotate90 > 0:
            quarter = torch.where(draws.gate(p * self.rotate90), draws.integer(4), 0)
            # Table look-up keeps the matrix exactly integer.
            cos = torch.tensor([1.0, 0.0, -1.0, 0.0], device=draws.device)[quarter]
            sin = torch.tensor([0.0, 1.0, 0.0, -1.0], device=draws.device)[quarter]
            inverse = inverse @ _rotate(cos, -sin)
            active |= quarter != 0
        if self.xint > 0:
            on = draws.gate(p * self.xint)
            tx = torch.where(on, torch.round(draws.uniform(-self.xint_max, self.xint_max) * w), 0)
            ty = torch.where(on, torch.round(draws.uniform(-self.xint_max, self.xint_max) * h), 0)
            inverse = inverse @ _translate(-tx, -ty)
            active |= (tx != 0) | (ty != 0)
        return inverse, active

    def _geometric_matrix(self, draws: _Draws, p: float, h: int, w: int) -> tuple[Tensor, Tensor]:
        """Output → source map [B, 3, 3] of the general geometric transforms, and which samples they touched [B]."""
        inverse = torch.eye(3, device=draws.device).repeat(draws.batch, 1, 1)
        active = torch.zeros(draws.batch, dtype=torch.bool, device=draws.device)
        if self.scale > 0:
            on = draws.gate(p * self.scale)
            s = torch.where(on, torch.exp2(draws.normal(self.scale_std)), 1)
            inverse = inverse @ _scale(1 / s, 1 / s)
            active |= on
        # Two rotations, each with 1 − sqrt(1 − p), so that at least one fires with probability p.
        p_rotate = 1 - math.sqrt(1 - min(p * self.rotate, 1.0))
        if self.rotate > 0:
            step, on = self._random_rotation(draws, p_rotate)
            inverse, active = inverse @ step, active | on
        if self.aniso > 0:
            on = draws.gate(p * self.aniso)
            s = torch.where(on, torch.exp2(draws.normal(self.aniso_std)), 1)
            inverse = inverse @ _scale(1 / s, s)
            active |= on
        if self.rotate > 0:
            step, on = self._random_rotation(draws, p_rotate)
            inverse, active = inverse @ step, active | on
        if self.xfrac > 0:
            on = draws.gate(p * self.xfrac)
            tx = torch.where(on, draws.normal(self.xfrac_std) * w, 0)
            ty = torch.where(on, draws.normal(self.xfrac_std) * h, 0)
            inverse = inverse @ _translate(-tx, -ty)
            active |= on
        return inverse, active

    def _random_rotation(self, draws: _Draws, probability: float) -> tuple[Tensor, Tensor]:
        """Inverse [B, 3, 3] of a rotation by U(−π, π)·rotate_max fired with the given probability, and where [B]."""
        on = draws.gate(probability)
        theta = torch.where(on, draws.uniform(-math.pi, math.pi) * self.rotate_max, 0)
        return _rotate(torch.cos(theta), -torch.sin(theta)), on

    def _color_matrix(self, draws: _Draws, p: float) -> tuple[Tensor, Tensor]:
        """Forward colour map [B, 4, 4] on (r, g, b, 1), and which samples it touched [B]."""
        b, device = draws.batch, draws.device
        eye = torch.eye(4, device=device)
        color = eye.repeat(b, 1, 1)
        active = torch.zeros(b, dtype=torch.bool, device=device)
        luma = torch.tensor([1.0, 1.0, 1.0, 0.0], device=device) / math.sqrt(3)  # unit grey axis
        luma_outer = torch.outer(luma, luma)
        if self.brightness > 0:
            on = draws.gate(p * self.brightness)
            shift = torch.where(on, draws.normal(self.brightness_std), 0)
            step = eye.repeat(b, 1, 1)
            step[:, :3, 3] = shift[:, None]
            color, active = step @ color, active | on
        if self.contrast > 0:
            on = draws.gate(p * self.contrast)
            c = torch.where(on, torch.exp2(draws.normal(self.contrast_std)), 1)
            step = eye.repeat(b, 1, 1)
            step[:, :3, :3] *= c[:, None, None]
            color, active = step @ color, active | on
        if self.lumaflip > 0:
            on = draws.gate(p * self.lumaflip) & (draws.integer(2) == 1)
            # Householder reflection of the component along the grey axis.
            color, active = (eye - 2 * luma_outer * on.float()[:, None, None]) @ color, active | on
        if self.hue > 0:
            on = draws.gate(p * self.hue)
            theta = torch.where(on, draws.uniform(-math.pi, math.pi) * self.hue_max, 0)
            color, active = _rotate_about(luma[:3], theta) @ color, active | on
        if self.saturation > 0:
            on = draws.gate(p * self.saturation)
            s = torch.where(on, torch.exp2(draws.normal(self.saturation_std)), 1)
            # Keep the grey component, scale the chroma plane around it.
            step = luma_outer + (eye - luma_outer) * s[:, None, None]
            step[:, 3, 3] = 1
            color, active = step @ color, active | on
        return color, active


def _rotate_about(axis: Tensor, theta: Tensor) -> Tensor:
    """Rodrigues rotation about the unit 3-vector ``axis`` by angles theta [B], embedded in [B, 4, 4]."""
    cross = torch.zeros(3, 3, device=axis.device)
    cross[0, 1], cross[0, 2], cross[1, 2] = -axis[2], axis[1], -axis[0]
    cross = cross - cross.T
    cos, sin = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    m = torch.eye(4, device=axis.device).repeat(theta.shape[0], 1, 1)
    m[:, :3, :3] = cos * torch.eye(3, device=axis.device) + sin * cross + (1 - cos) * torch.outer(axis, axis)
    return m


def adjust_p(p: float, rt: float, *, target: float, batch_size: int, interval: int, speed_kimg: float) -> float:
    """One step of ADA's heuristic: p + sign(r_t − target) · batch·interval / (speed_kimg·1000), clamped at 0.

    With the default speed p can move by 1 over 500 kimg of images seen by D.
    """
    direction = (rt > target) - (rt < target)
    return max(p + direction * batch_size * interval / (speed_kimg * 1000), 0.0)


class AdaptiveP:
    """ADA's overfitting heuristic: collects sign(D(real)) and adjusts p every ``interval`` iterations.

    Usage per training iteration: :meth:`observe` the real logits of each D step, then
    ``pipe.p.fill_(ada.step(float(pipe.p)))``. Only the accumulators are state; the constructor arguments
    are configuration.
    """

    def __init__(self, target: float = 0.6, interval: int = 4, speed_kimg: float = 500.0, batch_size: int = 64) -> None:
        if interval < 1 or speed_kimg <= 0 or batch_size < 1:
            raise ValueError(
                f"need interval ≥ 1, speed_kimg > 0, batch_size ≥ 1 (got {interval}, {speed_kimg}, {batch_size})"
            )
        self.target, self.interval, self.speed_kimg, self.batch_size = target, interval, speed_kimg, batch_size
        self.iterations = 0
        # A tensor while observing, so that accumulating costs no device synchronisation.
        self.sign_sum: Tensor | float = 0.0
        self.count = 0
        self.last_rt: float | None = None

    def observe(self, real_logits: Tensor) -> None:
        """Accumulate sign(D(real)) of any shape (detached)."""
        self.sign_sum = self.sign_sum + torch.sign(real_logits.detach()).sum().float()
        self.count += real_logits.numel()

    def step(self, p: float) -> float:
        """Count one iteration; every ``interval``-th (with observations) return the adjusted p, else p."""
        self.iterations += 1
        if self.iterations % self.interval != 0 or self.count == 0:
            return p
        self.last_rt = float(self.sign_sum) / self.count
        self.sign_sum, self.count = 0.0, 0
        return adjust_p(
            p,
            self.last_rt,
            target=self.target,
            batch_size=self.batch_size,
            interval=self.interval,
            speed_kimg=self.speed_kimg,
        )

    def state_dict(self) -> dict[str, Any]:
        """Plain Python numbers: iterations, sign_sum, count, last_rt."""
        return {
            "iterations": self.iterations,
            "sign_sum": float(self.sign_sum),
            "count": self.count,
            "last_rt": self.last_rt,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.iterations = int(state["iterations"])
        self.sign_sum = float(state["sign_sum"])
        self.count = int(state["count"])
        self.last_rt = None if state["last_rt"] is None else float(state["last_rt"])
