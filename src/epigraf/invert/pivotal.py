"""Pivotal tuning (Roich et al., PTI, 2022): fine-tune the generator around a found latent for fidelity.

The latent (the pivot) stays fixed and G's synthesis and field weights move, so the photo is reproduced more
closely. A locality regulariser keeps the rest of the latent space as it was: at w_r = w_p + t·(w_z − w_p)
for random w_z, the tuned G must render what the original G rendered, from a random camera of the model's
distribution. The mapping network is not tuned (the pivot is a w, not a z).
"""

from __future__ import annotations

import copy

import torch
from tqdm.auto import tqdm

from epigraf.cameras import sample_normal, sample_spherical_uniform
from epigraf.config import CameraConfig
from epigraf.invert.config import InversionConfig
from epigraf.invert.latent_fit import reconstruction_loss, render_image
from epigraf.invert.losses import InceptionPerceptual, mse
from epigraf.nn.generator import Generator
from epigraf.seeds import one_hot


def sample_angles(camera: CameraConfig, batch: int, generator: torch.Generator) -> torch.Tensor:
    """Random views [B, 3] from the model's camera distribution (dataset poses: its normal approximation)."""
    if camera.distribution == "spherical_uniform":
        return sample_spherical_uniform(batch, generator)
    return sample_normal(batch, camera.yaw_mean, camera.yaw_std, camera.pitch_mean, camera.pitch_std, generator)


def pivotal_tune(G: Generator, ws: torch.Tensor, angles: torch.Tensor, target: torch.Tensor, resolution: int,
                 config: InversionConfig, perceptual: InceptionPerceptual | None = None,
                 progress: bool = False) -> Generator:
    """A fine-tuned copy of G (G untouched): ws [1, num_ws, w_dim] and angles [1, 3] are the pivot and its
    camera; target [1, 3, resolution, resolution]. Runs ``config.pti_steps`` Adam steps at ``config.pti_lr``."""
    tuned = copy.deepcopy(G)
    tuned.requires_grad_(False)
    weights = [p for module in (tuned.synthesis, tuned.field) for p in module.parameters()]
    for p in weights:
        p.requires_grad_(True)
    opt = torch.optim.Adam(weights, lr=config.pti_lr, betas=(0.9, 0.999))
    generator = torch.Generator().manual_seed(config.seed + 1)
    device = ws.device
    for _ in tqdm(range(config.pti_steps), desc="pivotal tuning", disable=not progress, leave=False):
        image = render_image(tuned, ws, angles, resolution)
        loss = reconstruction_loss(image, target, config, perceptual).sum()
        if config.locality_weight > 0:
            z = torch.randn(1, G.z_dim, generator=generator).to(device)
            c = one_hot([config.class_index], G.c_dim).to(device) if G.c_dim > 0 else None
            with torch.no_grad():
                w_random = G.mapping(z, c)
                w_local = ws.lerp(w_random, config.locality_mix)
                view = sample_angles(G.cfg.camera, 1, generator).to(device)
                reference = render_image(G, w_local, view, resolution)
            loss = loss + config.locality_weight * mse(render_image(tuned, w_local, view, resolution), reference).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    tuned.requires_grad_(False)
    return tuned.eval()
