"""The patch-wise GAN objective (docs/method.md §5): non-saturating logistic loss, lazy R1, D-input blur.

Each phase returns a scalar loss for the training loop to back-propagate; the loop owns optimisers,
gradient averaging and the non-finite-gradient policy. G and D always see r×r patches, each with its own
patch parameters (fake and real draws are independent, docs/method.md §3.2). Each phase takes its random
inputs (z, labels, cameras, GPC conditioning cameras, patch parameters) from the iteration's draws
(epigraf.train.draws), where GPC spoofing happens too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from epigraf.config import ModelConfig
from epigraf.nn.discriminator import Discriminator
from epigraf.nn.generator import Generator, GeneratorOutput
from epigraf.patches import PatchParams, extract_patches
from epigraf.schedules import blur_kernel, blur_sigma, nerf_noise_std
from epigraf.train.augment import AugmentPipe
from epigraf.train.draws import FakeDraws, RealBatch


@dataclass
class PhaseResult:
    """A phase's scalar loss, its stats and the D logits it computed (detached): fake_logits [b] in the G and D
    phases, real_logits [b] in the D and R1 phases."""

    loss: Tensor
    stats: dict[str, float]
    fake_logits: Tensor | None = None
    real_logits: Tensor | None = None


def blur_images(images: Tensor, sigma: float) -> Tensor:
    """Separable blur with taps ∝ 2^(−(t/σ)²), |t| ≤ ⌊3σ⌋, zero padding (size kept). [B, C, H, W] → same."""
    kernel = blur_kernel(sigma).to(images)
    if kernel.numel() == 1:
        return images
    c, k = images.shape[1], kernel.numel()
    x = F.conv2d(images, kernel.view(1, 1, 1, k).expand(c, 1, 1, k), padding=(0, k // 2), groups=c)
    return F.conv2d(x, kernel.view(1, 1, k, 1).expand(c, 1, k, 1), padding=(k // 2, 0), groups=c)


class PatchGANLoss:
    """Computes the three phases of one EpiGRAF iteration from the iteration's draws (epigraf.train.draws) and the
    progress ``kimg``. ``deterministic_render`` renders the fakes without random elements (docs/method.md §12.1),
    as the original's recorded training steps do (tests/test_train_equivalence.py)."""

    def __init__(self, cfg: ModelConfig, G: Generator, D: Discriminator, augment: AugmentPipe | None,
                 r1_gamma: float, blur_init_sigma: float, blur_fade_kimg: float,
                 deterministic_render: bool = False, distortion_weight: float = 0.0,
                 wrong_camera_weight: float = 0.0) -> None:
        self.cfg, self.G, self.D, self.augment = cfg, G, D, augment
        self.distortion_weight = distortion_weight
        if wrong_camera_weight > 0 and not D.cfg.camera_cond:
            raise ValueError("real images at a wrong camera (--d-wrong-camera-weight) need a camera-conditioned D "
                             "(--d-camera-cond)")
        self.wrong_camera_weight = wrong_camera_weight
        self.r1_gamma = r1_gamma
        self.blur_init_sigma, self.blur_fade_kimg = blur_init_sigma, blur_fade_kimg
        self.deterministic_render = deterministic_render

    def check_batch(self, batch: int) -> None:
        """Refuse a per-process batch the objective cannot use: real images at a wrong camera take the next
        image's camera in the batch, so they need ≥ 2 images."""
        if self.wrong_camera_weight > 0 and batch < 2:
            raise ValueError("real images at a wrong camera (--d-wrong-camera-weight) take the next image's camera "
                             f"in the batch, so they need ≥ 2 images a batch per process, got {batch}")

    def generate(self, fake: FakeDraws, kimg: float, update_emas: bool = False, with_distortion: bool = False
                 ) -> GeneratorOutput:
        """Fake patches (image [b, 3, r, r]) at the draws' patch parameters; G's mapping sees the draws'
        conditioning cameras when G is pose-conditioned."""
        return self.G(
            fake.z, fake.c if self.G.c_dim else None, fake.camera_angles, patch_params=fake.patch,
            noise_mode="random", deterministic=self.deterministic_render, resolution=self.cfg.patch.resolution,
            camera_angles_cond=fake.camera_angles_cond if self.G.cfg.camera_cond else None,
            nerf_noise_std=nerf_noise_std(kimg, self.G.cfg.nerf_noise_std_init, self.G.cfg.nerf_noise_kimg_growth),
            update_emas=update_emas, with_distortion=with_distortion,
        )

    def fake_patches(self, out: GeneratorOutput) -> Tensor:
        """What D sees of G's render: its image [b, 3, r, r], with the opacity in [−1, 1] as a fourth channel when
        D takes alpha (the reals' coverage is the same channel)."""
        if self.D.cfg.img_channels == 4:
            return torch.cat([out.image, out.opacity * 2 - 1], dim=1)
        return out.image

    def discriminate(self, images: Tensor, c: Tensor, pp: PatchParams, angles: Tensor, kimg: float) -> Tensor:
        """Blur (faded by kimg) → augment → D. images [b, C, r, r] → logits [b]."""
        sigma = blur_sigma(kimg, self.blur_init_sigma, self.blur_fade_kimg)
        if sigma > 0:
            images = blur_images(images, sigma)
        if self.augment is not None:
            images = self.augment(images)
        return self.D(images, c if self.D.cfg.c_dim else None, pp,
                      camera_angles=angles if self.D.cfg.camera_cond else None)

    def real_patches(self, real: RealBatch, pp: PatchParams) -> Tensor:
        """The real images (and their coverage, when D takes alpha) resampled at the patches ``pp``. → [b, C, r, r]."""
        return extract_patches(real.images, pp, self.cfg.patch.resolution)

    def generator_loss(self, fake: FakeDraws, kimg: float) -> PhaseResult:
        """The non-saturating loss, plus ``distortion_weight`` × the mean distortion of the fakes' ray weights
        when it is > 0 (ours, not the original's: docs/method.md §5.1)."""
        out = self.generate(fake, kimg, with_distortion=self.distortion_weight > 0)
        logits = self.discriminate(self.fake_patches(out), fake.c, fake.patch, fake.camera_angles, kimg)
        loss = F.softplus(-logits).mean()
        stats = {"loss/G": loss.item(), "scores/fake_G": logits.mean().item()}
        if out.distortion is not None:
            distortion = out.distortion.mean()
            stats["loss/distortion"] = distortion.item()
            loss = loss + self.distortion_weight * distortion
        return PhaseResult(loss, stats, fake_logits=logits.detach())

    def discriminator_loss(self, fake: FakeDraws, real: RealBatch, real_patch: PatchParams, kimg: float
                           ) -> PhaseResult:
        """Fakes rendered without gradient (updating G's ``w_avg``) and real patches at ``real_patch``.

        With ``wrong_camera_weight`` > 0 (ours, not the original's: docs/method.md §5.1), D also sees the real
        patches at the camera of the next real image in the batch, and that pairing counts as fake with this
        weight: a matching-aware D (Reed et al., "Generative Adversarial Text to Image Synthesis", 2016), which
        must tell whether an image shows its camera's view, not only whether it looks real."""
        with torch.no_grad():
            images = self.fake_patches(self.generate(fake, kimg, update_emas=True))
        fake_logits = self.discriminate(images, fake.c, fake.patch, fake.camera_angles, kimg)
        real_images = self.real_patches(real, real_patch)
        real_logits = self.discriminate(real_images, real.c, real_patch, real.camera_angles, kimg)
        loss = F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()
        stats = {"scores/fake": fake_logits.mean().item(), "scores/real": real_logits.mean().item()}
        if self.wrong_camera_weight > 0:
            self.check_batch(real.camera_angles.shape[0])
            wrong_logits = self.discriminate(real_images, real.c, real_patch, real.camera_angles.roll(1, dims=0),
                                             kimg)
            loss = loss + self.wrong_camera_weight * F.softplus(wrong_logits).mean()
            stats["scores/real_wrong_camera"] = wrong_logits.mean().item()
        stats["loss/D"] = loss.item()
        return PhaseResult(loss, stats, fake_logits=fake_logits.detach(), real_logits=real_logits.detach())

    def r1_loss(self, real: RealBatch, real_patch: PatchParams, kimg: float, interval: int) -> PhaseResult:
        """Lazy R1 on the real patches ``real_patch``: (γ/2)·‖∇_x D(x)‖², multiplied by the lazy interval."""
        images = self.real_patches(real, real_patch).detach().requires_grad_(True)
        logits = self.discriminate(images, real.c, real_patch, real.camera_angles, kimg)
        (grad,) = torch.autograd.grad(logits.sum(), images, create_graph=True)
        penalty = grad.square().sum(dim=(1, 2, 3))
        loss = (penalty * (self.r1_gamma / 2)).mean() * interval
        return PhaseResult(loss, {"loss/r1_penalty": penalty.mean().item()}, real_logits=logits.detach())
