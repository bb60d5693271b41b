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

* Resampling and padding (a half-band filter in place of the paper's sym6 wavelet, mirror padding): the
  docstring of :mod:`epigraf.train.resample`, which holds :func:`warp_affine`, :func:`blit` and
  :func:`apply_color`.
* Samples for which no transform of a group fired are not touched by that group, so they stay bit-identical
  (the paper filters the whole batch whenever the geometric group is enabled). Pixel blitting is applied as
  an exact gather before the general geometric warp instead of being folded into its matrix: the result is
  the same, and samples with only blit transforms stay lossless.

:class:`AdaptiveP` is the paper's heuristic for p: r_t = E[sign(D(real))] over ``interval`` iterations,
p ← max(0, p + sign(r_t − target) · batch·interval / (speed_kimg·1000)).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from epigraf.train.resample import apply_color, blit, warp_affine


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
            images: [B, C, H, W], float, roughly in [−1, 1]; C must be 1, 3 or 4 (RGB and alpha, the colour
                transforms leaving the alpha) when colour transforms are on.
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
        if color_on and images.shape[1] not in (1, 3, 4):
            raise ValueError(f"colour transforms need 1, 3 or 4 (RGB and alpha) channels, got {images.shape[1]}")
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
