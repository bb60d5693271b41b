"""The patch-wise GAN objective (docs/method.md §5): non-saturating logistic loss, lazy R1, D-input blur, GPC spoofing.

Each phase returns a scalar loss for the training loop to back-propagate; the loop owns optimisers,
gradient averaging and the finite-step check. G and D always see r×r patches, each with its own
patch parameters (fake and real draws are independent, docs/method.md §3.2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from epigraf.config import ModelConfig
from epigraf.nn.discriminator import Discriminator
from epigraf.nn.generator import Generator
from epigraf.patches import PatchParams, extract_patches, sample_patch_params
from epigraf.schedules import blur_kernel, blur_sigma, gpc_spoof_prob, nerf_noise_std
from epigraf.train.augment import AugmentPipe


@dataclass
class PhaseInputs:
    """One rank's share of an iteration. real [b, 3, R, R] in [−1, 1]; real_c [b, c_dim]; real_angles [b, 3];
    z [b, z_dim]; fake_c [b, c_dim]; fake_angles [b, 3] (the rendering cameras of the fakes)."""

    real: Tensor
    real_c: Tensor
    real_angles: Tensor
    z: Tensor
    fake_c: Tensor
    fake_angles: Tensor


def blur_images(images: Tensor, sigma: float) -> Tensor:
    """Separable blur with taps ∝ 2^(−(t/σ)²), |t| ≤ ⌊3σ⌋, zero padding (size kept). [B, C, H, W] → same."""
    kernel = blur_kernel(sigma).to(images)
    if kernel.numel() == 1:
        return images
    c, k = images.shape[1], kernel.numel()
    x = F.conv2d(images, kernel.view(1, 1, 1, k).expand(c, 1, 1, k), padding=(0, k // 2), groups=c)
    return F.conv2d(x, kernel.view(1, 1, k, 1).expand(c, 1, k, 1), padding=(k // 2, 0), groups=c)


def spoof_camera_angles(angles: Tensor, p: float) -> Tensor:
    """GPC spoofing (docs/method.md §5.6): each sample joins a subset with probability p; within the subset,
    conditioning cameras are cyclically shifted by one position. angles [B, 3] → [B, 3]."""
    chosen = torch.nonzero(torch.rand(angles.shape[0], device=angles.device) < p).squeeze(1)
    out = angles.clone()
    if chosen.numel() > 1:
        out[chosen] = angles[chosen.roll(1)]
    return out


class PatchGANLoss:
    """Computes the three phases of one EpiGRAF iteration from ``PhaseInputs`` and the progress ``kimg``."""

    def __init__(self, cfg: ModelConfig, G: Generator, D: Discriminator, augment: AugmentPipe | None,
                 r1_gamma: float, blur_init_sigma: float, blur_fade_kimg: float,
                 gpc_spoof_final: float, gpc_spoof_kimg: float) -> None:
        self.cfg, self.G, self.D, self.augment = cfg, G, D, augment
        self.r1_gamma = r1_gamma
        self.blur_init_sigma, self.blur_fade_kimg = blur_init_sigma, blur_fade_kimg
        self.gpc_spoof_final, self.gpc_spoof_kimg = gpc_spoof_final, gpc_spoof_kimg

    def draw_patch_params(self, batch_size: int, kimg: float, device: torch.device) -> PatchParams:
        return sample_patch_params(batch_size, self.cfg.patch, kimg, device=device)

    def generate(self, x: PhaseInputs, kimg: float, update_emas: bool = False) -> tuple[Tensor, PatchParams]:
        """Fake patches [b, 3, r, r] with their patch parameters."""
        pp = self.draw_patch_params(x.z.shape[0], kimg, x.z.device)
        cond = None
        if self.G.cfg.camera_cond:
            spoof = gpc_spoof_prob(kimg, self.gpc_spoof_final, self.gpc_spoof_kimg)
            cond = spoof_camera_angles(x.fake_angles, spoof)
        out = self.G(
            x.z, x.fake_c if self.G.c_dim else None, x.fake_angles, patch_params=pp, noise_mode="random",
            resolution=self.cfg.patch.resolution, camera_angles_cond=cond,
            nerf_noise_std=nerf_noise_std(kimg, self.G.cfg.nerf_noise_std_init, self.G.cfg.nerf_noise_kimg_growth),
            update_emas=update_emas,
        )
        return out.image, pp

    def discriminate(self, images: Tensor, c: Tensor, pp: PatchParams, angles: Tensor, kimg: float) -> Tensor:
        """Blur (faded by kimg) → augment → D. images [b, 3, r, r] → logits [b]."""
        sigma = blur_sigma(kimg, self.blur_init_sigma, self.blur_fade_kimg)
        if sigma > 0:
            images = blur_images(images, sigma)
        if self.augment is not None:
            images = self.augment(images)
        return self.D(images, c if self.D.cfg.c_dim else None, pp,
                      camera_angles=angles if self.D.cfg.camera_cond else None)

    def real_patches(self, x: PhaseInputs, kimg: float) -> tuple[Tensor, PatchParams]:
        pp = self.draw_patch_params(x.real.shape[0], kimg, x.real.device)
        return extract_patches(x.real, pp, self.cfg.patch.resolution), pp

    def generator_loss(self, x: PhaseInputs, kimg: float) -> tuple[Tensor, dict[str, float]]:
        fake, pp = self.generate(x, kimg)
        logits = self.discriminate(fake, x.fake_c, pp, x.fake_angles, kimg)
        loss = F.softplus(-logits).mean()
        return loss, {"loss/G": loss.item(), "scores/fake_G": logits.mean().item()}

    def discriminator_loss(self, x: PhaseInputs, kimg: float) -> tuple[Tensor, Tensor, dict[str, float]]:
        """Returns (loss, real logits (detached, for ADA), stats)."""
        with torch.no_grad():
            fake, pp_fake = self.generate(x, kimg, update_emas=True)
        fake_logits = self.discriminate(fake, x.fake_c, pp_fake, x.fake_angles, kimg)
        real, pp_real = self.real_patches(x, kimg)
        real_logits = self.discriminate(real, x.real_c, pp_real, x.real_angles, kimg)
        loss = F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()
        stats = {"loss/D": loss.item(), "scores/fake": fake_logits.mean().item(),
                 "scores/real": real_logits.mean().item()}
        return loss, real_logits.detach(), stats

    def r1_loss(self, x: PhaseInputs, kimg: float, interval: int) -> tuple[Tensor, dict[str, float]]:
        """Lazy R1 on fresh real patches: (γ/2)·‖∇_x D(x)‖², multiplied by the lazy interval."""
        real, pp = self.real_patches(x, kimg)
        real = real.detach().requires_grad_(True)
        logits = self.discriminate(real, x.real_c, pp, x.real_angles, kimg)
        (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
        penalty = grad.square().sum(dim=(1, 2, 3))
        loss = (penalty * (self.r1_gamma / 2)).mean() * interval
        return loss, {"loss/r1_penalty": penalty.mean().item()}

