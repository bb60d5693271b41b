"""Latents of an inversion: the mean latent to start from, the generator's noise maps, and the latent file.

The latent file (``.safetensors``) holds ``ws`` [1, num_ws, w_dim] (w+ layout even for a w fit, so any
renderer can use it), ``camera_angles`` [1, 3] (yaw, pitch, roll; radians), ``fov`` and ``radius`` [1], and the
optimised noise maps as ``noise.<module path>`` [H, W]; metadata records the space and the fit's PSNR.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from epigraf.cameras import Cameras
from epigraf.files import atomic_write
from epigraf.nn.generator import Generator
from epigraf.seeds import one_hot

LATENT_FORMAT = "epigraf-latent-1"
NOISE_PREFIX = "noise."


@torch.no_grad()
def mapped_latents(G: Generator, num_samples: int, seed: int, class_index: int | None = None) -> Tensor:
    """``num_samples`` mapped z (z from RandomState(seed)) → w [num_samples, w_dim]."""
    if G.c_dim > 0 and class_index is None:
        raise ValueError(f"this model is class-conditional ({G.c_dim} classes): pass --class-index")
    if G.c_dim == 0 and class_index is not None:
        raise ValueError("--class-index is for class-conditional models; this one is unconditional")
    device = next(G.parameters()).device
    z = torch.from_numpy(np.random.RandomState(seed).randn(num_samples, G.z_dim)).float().to(device)
    c = one_hot([class_index] * num_samples, G.c_dim).to(device) if G.c_dim > 0 else None
    return G.mapping(z, c)[:, 0]


def mean_latent(G: Generator, num_samples: int, seed: int, class_index: int | None = None) -> tuple[Tensor, float]:
    """The mean w of ``mapped_latents`` → (w̄ [1, w_dim], σ_w).

    σ_w is the root-mean-square distance of the samples from w̄ (the scale of the w jitter). Computed rather
    than read from ``w_avg``, which an untrained or imported model may not have tracked.
    """
    w = mapped_latents(G, num_samples, seed, class_index)
    w_mean = w.mean(dim=0, keepdim=True)
    return w_mean, (w - w_mean).square().sum(dim=1).mean().sqrt().item()


def noise_buffers(G: Generator) -> dict[str, Tensor]:
    """The constant StyleGAN noise maps of G's synthesis layers: module path → [H, W] (G's own tensors)."""
    return {name: module.noise_const for name, module in G.named_modules()
            if getattr(module, "use_noise", False) and hasattr(module, "noise_const")}


def set_noise(G: Generator, noise: dict[str, Tensor]) -> None:
    """Replace G's noise buffers in place (same names and shapes as ``noise_buffers``)."""
    modules = dict(G.named_modules())
    for name, value in noise.items():
        if name not in modules or not hasattr(modules[name], "noise_const"):
            raise ValueError(f"the generator has no noise map {name!r}")
        if value.shape != modules[name].noise_const.shape:
            raise ValueError(f"noise map {name!r} is {list(value.shape)}, the generator's is "
                             f"{list(modules[name].noise_const.shape)}")
        modules[name].noise_const = value


@dataclass
class Latent:
    """A found latent: ws [1, num_ws, w_dim], its camera, and the noise maps it was fitted with."""

    ws: Tensor
    cameras: Cameras
    noise: dict[str, Tensor] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


def save_latent(latent: Latent, path: str | os.PathLike) -> Path:
    """Write a latent file (see the module docstring). Returns the path."""
    path = Path(path)
    cams = latent.cameras
    tensors = {"ws": latent.ws, "camera_angles": cams.angles, "fov": cams.fov, "radius": cams.radius,
               **{NOISE_PREFIX + k: v for k, v in latent.noise.items()}}
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": LATENT_FORMAT, "metadata": json.dumps(latent.metadata)})
    return path


def load_latent(path: str | os.PathLike) -> Latent:
    """Read a latent file written by ``save_latent``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"latent file not found: {path}")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path} is not a latent file: {err}") from err
    missing = {"ws", "camera_angles", "fov", "radius"} - set(tensors)
    if missing:
        raise ValueError(f"{path} is not an epigraf latent file: it lacks {sorted(missing)}")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    noise = {k[len(NOISE_PREFIX):]: v for k, v in tensors.items() if k.startswith(NOISE_PREFIX)}
    cams = Cameras(tensors["camera_angles"], tensors["fov"], tensors["radius"])
    return Latent(tensors["ws"], cams, noise, json.loads(meta.get("metadata", "{}")))
