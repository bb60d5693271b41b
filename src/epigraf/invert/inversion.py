"""One photo → a latent, a camera and (optionally) a pivotally tuned generator.

    result = invert(G, target)                                  # target [1, 3, R, R] in [−1, 1]
    result = invert(G, target, angles=torch.tensor([[0.3, 1.5, 0.0]]))   # a known camera is kept fixed
    result = invert(G, target, angles=start, refine_camera=True)          # ... or a starting camera, refined
    out = result.generator.render(result.generator.synthesize(result.latent.ws), result.latent.cameras)

A multi-start search (``camera_search``) fits many (view, starting latent) pairs briefly: views from a grid
over the model's camera distribution, or only the given camera; its best few pairs are refined (latent, and the
camera when it is estimated) and the best of those is fitted in full. An estimated camera gets a second
multi-start at it, the latent starting afresh.
The given G is never modified; ``result.generator`` is a copy carrying the optimised noise maps (and, with
``pti_steps``, the tuned weights).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
from torch import Tensor

from epigraf.cameras import checked_angles
from epigraf.invert.camera_search import candidate_angles, search_starts
from epigraf.invert.config import InversionConfig
from epigraf.invert.latent import Latent, set_noise
from epigraf.invert.latent_fit import LatentFit, downsample, render_image
from epigraf.invert.losses import InceptionPerceptual, psnr
from epigraf.invert.pivotal import pivotal_tune
from epigraf.nn.generator import Generator

log = logging.getLogger(__name__)


@dataclass
class Inversion:
    """The result: ``latent`` (ws [1, num_ws, w_dim], camera, noise maps), the generator to render it with
    (pivotally tuned when asked), the generator before tuning (carrying the fitted noise maps; the same object
    without tuning), and the PSNR (dB) at the input view before and after tuning (equal without it)."""

    latent: Latent
    generator: Generator
    untuned: Generator
    psnr: float
    psnr_tuned: float


def _checked_target(G: Generator, target: Tensor, resolution: int) -> Tensor:
    if target.ndim != 4 or target.shape[:2] != (1, 3) or target.shape[2] != target.shape[3]:
        raise ValueError(f"the target must be one square RGB image [1, 3, R, R], got {list(target.shape)}")
    device = next(G.parameters()).device
    return downsample(target.float().to(device), resolution)


def multi_start(fit: LatentFit, views: Tensor, config: InversionConfig, refine_camera: bool, resolution: int,
                progress: bool) -> tuple[Tensor, Tensor]:
    """Search (view, starting latent) pairs, views [V, 3]; refine the best few; → (w [1, L, w_dim], angles [1, 3])
    of the one with the lowest loss after refinement."""
    w, angles, losses = search_starts(fit, views, config, progress)
    if config.refine_steps > 0:
        w, angles, losses = fit.run(w, angles, config.refine_steps, refine_camera=refine_camera,
                                    resolution=resolution, progress="refining" if progress else None, full_loss=False)
    best = losses.argmin()
    return w[best, None], angles[best, None]


def invert(G: Generator, target: Tensor, config: InversionConfig | None = None, angles: Tensor | None = None,
           perceptual: InceptionPerceptual | None = None, progress: bool = False,
           refine_camera: bool = False) -> Inversion:
    """Fit a latent to ``target`` [1, 3, R, R] (values in [−1, 1]); ``angles`` [1, 3] fixes the camera, or with
    ``refine_camera`` is where the camera starts (no search grid) and is refined with the latent.

    The fit runs at ``config.resolution`` (default: the model's image resolution); the target is resized to it.
    """
    config = config or InversionConfig()
    resolution = config.resolution or G.cfg.image_resolution
    target = _checked_target(G, target, resolution)
    work = copy.deepcopy(G).eval()
    fit = LatentFit(work, target, config, perceptual)
    refine = angles is None or refine_camera
    if angles is None:
        views = candidate_angles(G.cfg.camera, config.search_yaws, config.search_pitches, config.search_span)
        _, angles = multi_start(fit, views.to(target.device), config, refine, resolution, progress)
        log.info("camera search: yaw %.3f, pitch %.3f", angles[0, 0].item(), angles[0, 1].item())
    else:
        angles = checked_angles(angles.reshape(1, 3).float()).to(target.device)
    # The latent starts again from every start at the chosen camera: the one the camera search kept was picked
    # while the camera was still off, and is often a poor basin at the right camera.
    w, angles = multi_start(fit, angles, config, refine, resolution, progress)
    w, angles, _ = fit.run(w, angles, config.steps, refine_camera=refine, resolution=resolution,
                           progress="inverting" if progress else None)
    noise = {k: v.detach() for k, v in fit.noise.items()}
    set_noise(work, noise)
    ws = fit.expand(w)
    with torch.no_grad():
        fitted = psnr(render_image(work, ws, angles, resolution), target).item()
    result_G, tuned = work, fitted
    if config.pti_steps > 0:
        result_G = pivotal_tune(work, ws, angles, target, resolution, config, perceptual, progress)
        with torch.no_grad():
            tuned = psnr(render_image(result_G, ws, angles, resolution), target).item()
    metadata = {"space": config.space, "steps": config.steps, "seed": config.seed, "psnr": fitted,
                "pti_steps": config.pti_steps, "psnr_tuned": tuned, "camera_estimated": refine}
    latent = Latent(ws.detach(), G.cameras(angles.detach()), noise, metadata)
    return Inversion(latent, result_G, work, fitted, tuned)
