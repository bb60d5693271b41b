"""The resampling kernels of the augmentation pipe (:mod:`epigraf.train.augment`, docs/method.md §5.7): an
antialiased affine warp (:func:`warp_affine`), an exact pixel blit (:func:`blit`) and per-sample colour matrices
(:func:`apply_color`).

Choices relative to ADA (Karras et al., NeurIPS 2020, appendix B):

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
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from torch import Tensor

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
        return torch.grid_sampler_2d(images, grid.to(images.dtype), _BILINEAR, _REFLECTION, True)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        images, grid = ctx.saved_tensors
        return _ReflectSampleTranspose.apply(grad, images, grid), None


class _ReflectSampleTranspose(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, grad: Tensor, images: Tensor, grid: Tensor) -> Tensor:
        ctx.save_for_backward(grid)
        # ``images`` only supplies the input's shape to aten: bilinear weights do not depend on its values.
        # aten wants one dtype for all three; under bf16 autocast the incoming gradient's may differ.
        grad_images, _ = torch.ops.aten.grid_sampler_2d_backward(
            grad, images.to(grad.dtype), grid.to(grad.dtype), _BILINEAR, _REFLECTION, True, [True, False])
        return grad_images.to(images.dtype)

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
        images: [B, 3, H, W] RGB, [B, 1, H, W] grey (transformed as (g, g, g) and averaged back), or
            [B, 4, H, W] RGB and alpha (the alpha passes unchanged: a colour change does not move the object).
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
    if images.shape[1] == 4:
        return torch.cat([apply_color(images[:, :3], matrix), images[:, 3:]], dim=1)
    raise ValueError(f"colour transforms need 1, 3 or 4 (RGB and alpha) channels, got {images.shape[1]}")
