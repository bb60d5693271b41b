"""Coarse camera search: which view of the model's camera distribution best explains the photo.

Each candidate (a yaw × pitch grid) gets a short latent fit of its own, all candidates in one batch; the
candidate with the lowest loss seeds the joint latent-and-camera refinement. A short fit per candidate, not
just the mean latent's render, because the mean scene rarely resembles the photo at any view.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from epigraf.cameras import PITCH_EPS
from epigraf.config import CameraConfig
from epigraf.invert.config import InversionConfig
from epigraf.invert.fit import LatentFit


def candidate_angles(camera: CameraConfig, num_yaws: int, num_pitches: int, span: float) -> Tensor:
    """The search grid → angles [num_yaws · num_pitches, 3] (roll 0).

    A "spherical_uniform" model sees every direction: yaw covers the full turn (periodic, no duplicate end),
    pitch the open interval (0, π). Otherwise (dataset poses or a normal distribution) the grid spans
    mean ± span·std of yaw and of pitch, pitch clamped inside (0, π).
    """
    if camera.distribution == "spherical_uniform":
        yaws = torch.arange(num_yaws) * (2 * math.pi / num_yaws) - math.pi
        pitches = (torch.arange(num_pitches) + 0.5) * (math.pi / num_pitches)
    else:
        def axis(mean: float, std: float, n: int) -> Tensor:
            return torch.full((1,), mean) if n == 1 else torch.linspace(mean - span * std, mean + span * std, n)
        yaws = axis(camera.yaw_mean, camera.yaw_std, num_yaws)
        pitches = axis(camera.pitch_mean, camera.pitch_std, num_pitches).clamp(PITCH_EPS, math.pi - PITCH_EPS)
    yaw, pitch = torch.meshgrid(yaws, pitches, indexing="ij")
    return torch.stack([yaw.flatten(), pitch.flatten(), torch.zeros(yaw.numel())], dim=1).float()


def search_camera(fit: LatentFit, config: InversionConfig, progress: bool = False) -> tuple[Tensor, Tensor]:
    """→ (best angles [1, 3], losses [K] of all candidates, in ``candidate_angles`` order)."""
    camera = fit.G.cfg.camera
    angles = candidate_angles(camera, config.search_yaws, config.search_pitches, config.search_span)
    angles = angles.to(fit.w_mean.device)
    resolution = min(config.search_resolution, fit.target.shape[-1])
    losses = []
    for batch in angles.split(config.search_batch):
        _, _, loss = fit.run(fit.initial_w(len(batch)), batch, config.search_steps, refine_camera=False,
                             resolution=resolution, progress="camera search" if progress else None, full_loss=False)
        losses.append(loss)
    losses = torch.cat(losses)
    return angles[losses.argmin()][None], losses
