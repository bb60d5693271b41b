"""Coarse search: which view of the model's camera distribution, and which starting latent, best explain the photo.

The loss of an inversion has many poor local minima, in the camera and in the latent alike: a fit from one
start (the mean latent at the best-looking view) stalls in one of them for a good share of photos. So every
pair of a candidate view (a yaw × pitch grid, or just the given camera) and a starting latent (the mean latent,
then samples of the mapping network) gets a short latent fit of its own, all in batches at a low resolution;
the ``refine_candidates`` best pairs then go on to the multi-start refinement in ``inversion.py``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from epigraf.cameras import PITCH_EPS
from epigraf.config import CameraConfig
from epigraf.invert.config import InversionConfig
from epigraf.invert.latent_fit import LatentFit


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


def search_starts(fit: LatentFit, views: Tensor, config: InversionConfig,
                  progress: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """Fit every (view, starting latent) pair briefly, camera fixed; views [V, 3].

    → (w [k, L, w_dim], angles [k, 3], losses [k]) of the k = min(refine_candidates, V · search_latents) pairs
    with the lowest loss, best first.
    """
    starts = fit.starting_latents(config.search_latents)
    w = starts.repeat(len(views), 1, 1)
    angles = views.to(starts.device).repeat_interleave(len(starts), dim=0)
    resolution = min(config.search_resolution, fit.target.shape[-1])
    fitted, losses = [], []
    for w_batch, angles_batch in zip(w.split(config.search_batch), angles.split(config.search_batch), strict=True):
        w_batch, _, loss = fit.run(w_batch, angles_batch, config.search_steps, refine_camera=False,
                                   resolution=resolution, progress="search" if progress else None, full_loss=False)
        fitted.append(w_batch)
        losses.append(loss)
    losses = torch.cat(losses)
    best = losses.argsort()[: config.refine_candidates]
    return torch.cat(fitted)[best], angles[best], losses[best]
