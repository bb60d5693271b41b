"""Seeds for inference: seed ranges → z, class labels, truncated ws (docs/method.md §1.1, §7.2), W-space paths.

A seed names one latent for good: z = numpy ``RandomState(seed).randn(z_dim)``, as the original's scripts,
so seed 7 is the same sample here, in the original and in any later run.

    ws = seeds_to_ws(G, [0, 1, 2], truncation_psi=0.7)      # [3, num_ws, w_dim]
    planes = G.synthesize(ws)
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from epigraf.nn.generator import Generator

# Truncation centre of a class-conditional model: the mean w of this many random z with that class.
CLASS_MEAN_SAMPLES = 256

MAX_SEED = 2**32 - 1  # RandomState's largest seed
_SEED_ITEM = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def parse_seeds(specs: str | Sequence[str]) -> list[int]:
    """Seeds from ranges: ``"0-3,12"`` → [0, 1, 2, 3, 12] (ranges inclusive). A list of such strings is
    concatenated in order; duplicates are kept (the caller asked for them)."""
    if isinstance(specs, str):
        specs = [specs]
    seeds: list[int] = []
    for spec in specs:
        for item in spec.split(","):
            where = f"--seeds {item!r}" if item == spec else f"--seeds {spec!r}: {item!r}"
            match = _SEED_ITEM.match(item)
            if match is None:
                raise ValueError(f"{where} is not a seed or a range of seeds; give whole numbers from 0 to "
                                 f"{MAX_SEED:,} and inclusive ranges, e.g. --seeds 0-7,12")
            first, last = int(match[1]), int(match[2] or match[1])
            if last < first:
                raise ValueError(f"{where} is a range whose end is below its start")
            if last > MAX_SEED:
                raise ValueError(f"{where}: seeds go up to {MAX_SEED:,} (numpy's RandomState)")
            seeds.extend(range(first, last + 1))
    if not seeds:
        raise ValueError("no seeds given")
    return seeds


def seeds_to_z(seeds: Sequence[int], z_dim: int) -> Tensor:
    """→ z [N, z_dim] (float32), row i = RandomState(seeds[i]).randn(z_dim)."""
    return torch.from_numpy(np.stack([np.random.RandomState(s).randn(z_dim) for s in seeds])).float()


def seed_classes(seeds: Sequence[int], z_dim: int, c_dim: int, class_index: int | None = None) -> list[int]:
    """The class of each seed: ``class_index`` for all, or (None) a random class per seed, drawn from the
    seed's own RandomState right after its z, so a seed always names the same (z, class) pair."""
    if c_dim == 0:
        if class_index is not None:
            raise ValueError(f"--class-index must be in [0, 0): this model is unconditional, got {class_index}")
        return []
    if class_index is not None:
        if not 0 <= class_index < c_dim:
            raise ValueError(f"--class-index must be in [0, {c_dim}), got {class_index}")
        return [class_index] * len(seeds)
    classes = []
    for s in seeds:
        rs = np.random.RandomState(s)
        rs.randn(z_dim)
        classes.append(int(rs.randint(c_dim)))
    return classes


def one_hot(classes: Sequence[int], c_dim: int) -> Tensor:
    """Class indices [N] → labels [N, c_dim] (float32)."""
    return torch.nn.functional.one_hot(torch.tensor(list(classes), dtype=torch.long), c_dim).float()


def _device(G: Generator) -> torch.device:
    return next(G.parameters()).device


@torch.no_grad()
def class_mean_ws(G: Generator, classes: Sequence[int], num_samples: int = CLASS_MEAN_SAMPLES,
                  seed: int = 0) -> Tensor:
    """Per-class truncation centres: mean of ``G.mapping(z, c)`` over ``num_samples`` z from RandomState(seed).
    → [N, num_ws, w_dim], row i for classes[i]. A conditional model's global ``w_avg`` mixes all classes,
    so truncating towards it would pull every sample towards an average class (docs/method.md §1.1)."""
    z = torch.from_numpy(np.random.RandomState(seed).randn(num_samples, G.z_dim)).float().to(_device(G))
    means = {}
    for k in sorted(set(classes)):
        c = one_hot([k] * num_samples, G.c_dim).to(z.device)
        means[k] = G.mapping(z, c, truncation_psi=1.0).mean(dim=0)
    return torch.stack([means[k] for k in classes])


@torch.no_grad()
def seeds_to_ws(G: Generator, seeds: Sequence[int], truncation_psi: float = 0.7,
                class_index: int | None = None) -> Tensor:
    """Seeds → ws [N, num_ws, w_dim] on G's device, truncated w ← centre + ψ (w − centre).

    The centre is the tracked ``w_avg`` of an unconditional model and, for a class-conditional model, the mean
    w of the seed's class (``class_mean_ws``); the class is ``class_index`` or random per seed (``seed_classes``).
    A pose-conditioned model is conditioned on its mean camera pose, so one latent gives one 3D scene.
    """
    z = seeds_to_z(seeds, G.z_dim).to(_device(G))
    classes = seed_classes(seeds, G.z_dim, G.c_dim, class_index)
    if G.c_dim == 0:
        return G.mapping(z, None, truncation_psi=truncation_psi)
    ws = G.mapping(z, one_hot(classes, G.c_dim).to(z.device), truncation_psi=1.0)
    return ws if truncation_psi == 1 else class_mean_ws(G, classes).lerp(ws, truncation_psi)


def interpolate_ws(keyframes: Tensor, num_frames: int) -> Tensor:
    """Piecewise-linear path in W through K keyframes [K, num_ws, w_dim] → [num_frames, num_ws, w_dim].

    Frames are evenly spaced in keyframe time [0, K − 1], both ends included (frame 0 = keyframe 0, the last
    frame = keyframe K − 1). W (not Z) because the mapping network makes W the space where straight lines stay
    on the learned distribution.
    """
    k = keyframes.shape[0]
    if k < 2 or num_frames < 2:
        raise ValueError(f"interpolation needs ≥ 2 keyframes and ≥ 2 frames, got {k} and {num_frames}")
    s = torch.linspace(0.0, k - 1, num_frames, device=keyframes.device)
    idx = s.floor().long().clamp(max=k - 2)
    t = (s - idx).reshape(-1, *([1] * (keyframes.ndim - 1)))
    return keyframes[idx].lerp(keyframes[idx + 1], t.to(keyframes.dtype))
