"""The random inputs of one training iteration, drawn before it runs (docs/method.md §5.4).

As in the original, every phase has its own draws: the G phase (``Gall``) and the D phase (``Dmain``) each
render fakes from their own z, labels, rendering cameras, GPC conditioning cameras and fake-patch
parameters; one real batch per iteration is shared by the D phase and the lazy R1 phase (``Dreg``), each
with its own real-patch parameters. ``training_step`` (epigraf.train.loop) takes an ``IterationDraws`` and
draws nothing itself, apart from what the networks draw inside (StyleGAN noise, ray jitter, NeRF noise,
camera-conditioning dropout) and ADA. ``train()`` fills it with ``draw_iteration`` from the run's seeded
RNG; tests/test_train_equivalence.py fills it from the original's recorded draws.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from epigraf.config import ModelConfig
from epigraf.patches import PatchParams, sample_patch_params

# labels [n, c_dim] and rendering cameras [n, 3] for n fakes (epigraf.train.loop.fake_conditioning in train()).
FakeConditioning = Callable[[int], tuple[Tensor, Tensor]]


@dataclass
class RealBatch:
    """One rank's real images of an iteration: images [b, C, R, R] in [−1, 1] (RGB, and the coverage as alpha when D
    takes it), c [b, c_dim] (labels), camera_angles [b, 3] (the dataset's, flip-corrected; what a pose-conditioned
    D sees for reals)."""

    images: Tensor
    c: Tensor
    camera_angles: Tensor


@dataclass
class FakeDraws:
    """What one phase feeds G: z [b, z_dim], c [b, c_dim], camera_angles [b, 3] (the rendering cameras, also
    what a pose-conditioned D sees), camera_angles_cond [b, 3] (the pose G's mapping is conditioned on with GPC:
    the rendering camera, or another sample's where spoofed) and patch (the fake patches' parameters)."""

    z: Tensor
    c: Tensor
    camera_angles: Tensor
    camera_angles_cond: Tensor
    patch: PatchParams


@dataclass
class IterationDraws:
    """Every draw of one iteration. ``dreg_real_patch`` is None on iterations without the lazy R1 phase."""

    real: RealBatch
    gall: FakeDraws
    dmain: FakeDraws
    dmain_real_patch: PatchParams
    dreg_real_patch: PatchParams | None


def spoof_camera_angles(angles: Tensor, p: float) -> Tensor:
    """GPC spoofing (docs/method.md §5.6): each sample joins a subset with probability p; within the subset,
    conditioning cameras are cyclically shifted by one position. angles [B, 3] → [B, 3]."""
    chosen = torch.nonzero(torch.rand(angles.shape[0], device=angles.device) < p).squeeze(1)
    out = angles.clone()
    if chosen.numel() > 1:
        out[chosen] = angles[chosen.roll(1)]
    return out


def draw_fakes(batch: int, cfg: ModelConfig, kimg: float, conditioning: FakeConditioning, spoof_p: float,
               device: torch.device) -> FakeDraws:
    """One phase's fake draws from the global RNG: z ~ N(0, I), labels and cameras from ``conditioning``, the
    GPC conditioning cameras (spoofed with probability ``spoof_p`` when G is pose-conditioned) and the patch
    parameters at progress ``kimg``."""
    z = torch.randn(batch, cfg.generator.z_dim, device=device)
    c, angles = conditioning(batch)
    cond = spoof_camera_angles(angles, spoof_p) if cfg.generator.camera_cond else angles
    return FakeDraws(z, c, angles, cond, sample_patch_params(batch, cfg.patch, kimg, device=device))


def draw_iteration(real: RealBatch, cfg: ModelConfig, kimg: float, conditioning: FakeConditioning, *,
                   spoof_p: float, with_r1: bool) -> IterationDraws:
    """Every phase's draws for one iteration on ``real``, in phase order (G, D, R1 when ``with_r1``)."""
    b, device = real.images.shape[0], real.images.device
    gall = draw_fakes(b, cfg, kimg, conditioning, spoof_p, device)
    dmain = draw_fakes(b, cfg, kimg, conditioning, spoof_p, device)
    dmain_real_patch = sample_patch_params(b, cfg.patch, kimg, device=device)
    dreg_real_patch = sample_patch_params(b, cfg.patch, kimg, device=device) if with_r1 else None
    return IterationDraws(real, gall, dmain, dmain_real_patch, dreg_real_patch)
