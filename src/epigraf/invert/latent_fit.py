"""Fitting a latent (and the camera) to a target image by gradient descent through the renderer.

    fit = LatentFit(G, target, config, perceptual)
    w, angles, loss = fit.run(fit.initial_w(1), angles, steps, refine_camera=True, resolution=64)
    ws = fit.expand(w)                                   # [1, num_ws, w_dim]

Rendering is deterministic (fixed ray samples, the generator's constant noise maps), so the loss is a
function of the latent and the camera alone and a seed fixes the whole run.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from epigraf.cameras import PITCH_EPS
from epigraf.invert.config import InversionConfig
from epigraf.invert.latent import mapped_latents, mean_latent, noise_buffers, set_noise
from epigraf.invert.losses import InceptionPerceptual, mse, noise_regularization, ssim
from epigraf.nn.generator import Generator

# Pitch is kept this far from the poles while refined: at a pole yaw stops mattering and gradients vanish.
PITCH_MARGIN = 0.05
WARMUP = 0.05  # fraction of the steps with a linear learning-rate warm-up
RAMPDOWN = 0.25  # fraction of the steps with a cosine ramp-down
W_NOISE_END = 0.75  # the w jitter fades to zero at this fraction of the steps


def learning_rate_scale(t: float) -> float:
    """Schedule factor at progress t ∈ [0, 1]: linear warm-up, constant, cosine ramp-down to 0."""
    down = 0.5 - 0.5 * math.cos(math.pi * min(1.0, (1.0 - t) / RAMPDOWN))
    return down * min(1.0, t / WARMUP)


def render_image(G: Generator, ws: Tensor, angles: Tensor, resolution: int) -> Tensor:
    """ws [B, num_ws, w_dim], angles [B, 3] → image [B, 3, resolution, resolution] (deterministic rays)."""
    planes = G.synthesize(ws, noise_mode="const")
    return G.render(planes, G.cameras(angles), resolution=resolution, deterministic=True, ws=ws).image


def reconstruction_loss(image: Tensor, target: Tensor, config: InversionConfig,
                        perceptual: InceptionPerceptual | None) -> Tensor:
    """Per-image loss [B]: MSE, 1 − SSIM and (when available) the perceptual distance, weighted."""
    loss = config.mse_weight * mse(image, target)
    if config.ssim_weight > 0:
        loss = loss + config.ssim_weight * (1 - ssim(image, target))
    if perceptual is not None and config.perceptual_weight > 0:
        loss = loss + config.perceptual_weight * perceptual(image, target)
    return loss


def downsample(target: Tensor, resolution: int) -> Tensor:
    """The target at the render resolution (area-averaged, as the pixels of a coarser render cover more)."""
    if target.shape[-1] == resolution:
        return target
    return F.interpolate(target, size=resolution, mode="area" if target.shape[-1] > resolution else "bilinear")


class LatentFit:
    """The state of one fit: G (frozen weights; its noise maps become variables), w and the camera angles.

    G is used as given: pass a copy when its noise maps must stay untouched. ``ws`` starts at the mean latent,
    repeated over B candidates; candidates are independent (the loss is their sum and Adam is per element).
    """

    def __init__(self, G: Generator, target: Tensor, config: InversionConfig,
                 perceptual: InceptionPerceptual | None = None, generator: torch.Generator | None = None) -> None:
        self.G, self.config, self.perceptual = G, config, perceptual
        self.target = target
        self.generator = generator or torch.Generator().manual_seed(config.seed)
        G.requires_grad_(False)
        self.w_mean, self.w_std = mean_latent(G, config.mean_samples, config.seed, config.class_index)
        self.noise = noise_buffers(G) if config.optimize_noise else {}
        for name, value in self.noise.items():
            self.noise[name] = value.detach().clone().requires_grad_(True)
        set_noise(G, self.noise)

    def initial_w(self, batch: int) -> Tensor:
        """w to optimise: [B, 1, w_dim] in W (shared by all layers) or [B, num_ws, w_dim] in W+."""
        layers = 1 if self.config.space == "w" else self.G.num_ws
        return self.w_mean[:, None].repeat(batch, layers, 1)

    def starting_latents(self, count: int) -> Tensor:
        """``count`` starts for a multi-start search [count, L, w_dim]: the mean latent, then mapped samples
        (seeded by config.seed, drawn apart from the mean's samples)."""
        samples = (mapped_latents(self.G, count - 1, self.config.seed + 1, self.config.class_index) if count > 1
                   else self.w_mean[:0])
        starts = torch.cat([self.w_mean, samples])
        return starts[:, None].repeat(1, 1 if self.config.space == "w" else self.G.num_ws, 1)

    def expand(self, w: Tensor) -> Tensor:
        return w.expand(-1, self.G.num_ws, -1)

    def run(self, w: Tensor, angles: Tensor, steps: int, refine_camera: bool, resolution: int,
            progress: str | None = None, full_loss: bool = True,
            on_step: Callable[[int, Tensor], None] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Optimise w [B, L, w_dim] (and yaw/pitch of angles [B, 3] when ``refine_camera``) for ``steps``.

        → (w, angles, per-candidate final loss [B]), detached. ``progress`` is a progress-bar label (None: no bar).
        ``full_loss`` False (the camera search) leaves out the perceptual term and the shared noise maps, which
        must not be pulled towards several candidates at once.
        """
        cfg = self.config
        target = downsample(self.target, resolution).expand(w.shape[0], -1, -1, -1)
        w = w.detach().clone().requires_grad_(True)
        yaw_pitch = angles[:, :2].detach().clone().requires_grad_(refine_camera)
        roll = angles[:, 2:].detach()
        noise = list(self.noise.values()) if full_loss else []
        groups = [{"params": [w, *noise], "lr": cfg.lr}]
        if refine_camera:
            groups.append({"params": [yaw_pitch], "lr": cfg.camera_lr})
        opt = torch.optim.Adam(groups, betas=(0.9, 0.999))
        base_lr = [g["lr"] for g in groups]
        loss = torch.zeros(w.shape[0])
        for step in tqdm(range(steps), desc=progress, disable=progress is None, leave=False):
            t = step / max(steps - 1, 1)
            for g, lr in zip(opt.param_groups, base_lr, strict=True):
                g["lr"] = lr * learning_rate_scale(t)
            jitter = self.w_std * cfg.w_noise * max(0.0, 1 - t / W_NOISE_END) ** 2
            w_in = w + jitter * torch.randn(w.shape, generator=self.generator).to(w)
            image = render_image(self.G, self.expand(w_in), torch.cat([yaw_pitch, roll], dim=1), resolution)
            loss = reconstruction_loss(image, target, cfg, self.perceptual if full_loss else None)
            total = loss.sum()
            if noise:
                total = total + cfg.noise_weight * noise_regularization(noise)
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            with torch.no_grad():
                yaw_pitch[:, 1].clamp_(PITCH_MARGIN + PITCH_EPS, math.pi - PITCH_MARGIN)
                for n in noise:  # keep the maps unit noise, as the generator was trained with
                    n.sub_(n.mean()).div_(n.square().mean().sqrt().clamp_min(1e-8))
            if on_step is not None:
                on_step(step, loss.detach())
        return w.detach(), torch.cat([yaw_pitch, roll], dim=1).detach(), loss.detach()
