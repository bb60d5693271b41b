"""Rendering trained generators for inference: batched views of fixed latents, more ray steps.

Visualisations use the stored constant StyleGAN noise and, by default, deterministic ray sampling
(docs/method.md §10 row 2, §12.1), so the same seed and camera always give the same picture.

    G2 = with_ray_steps(G, 2)                               # the original's inference setting (docs/method.md §7.2)
    ws = seeds_to_ws(G2, [0])                               # one latent ...
    for out in render_batches(G2, ws, front_circle(64)):    # ... tri-planes computed once, 64 frames
        frames.append(to_uint8(out.image))
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator

import torch
from torch import Tensor

from epigraf.cameras import Cameras
from epigraf.cameras.paths import take
from epigraf.nn.generator import Generator, GeneratorOutput

# The original's inference defaults (docs/method.md §7.2), shared by `epigraf generate` and the viewer.
DEFAULT_TRUNCATION = 0.7
DEFAULT_RAY_STEP_MULTIPLIER = 2


def _with_render(G: Generator, **changes) -> Generator:
    """A shallow copy of ``G`` whose ``cfg.render`` has ``changes``: every parameter, buffer and sub-module
    is G's own (no weights copied, later weight updates show through), so G and its config are untouched."""
    view = copy.copy(G)
    view.cfg = dataclasses.replace(G.cfg, render=dataclasses.replace(G.cfg.render, **changes))
    return view


def with_ray_steps(G: Generator, multiplier: int) -> Generator:
    """A view of ``G`` that renders with ``num_ray_steps × multiplier`` coarse (and as many fine) samples."""
    if multiplier < 1:
        raise ValueError(f"--ray-step-multiplier must be ≥ 1, got {multiplier}")
    if multiplier == 1:
        return G
    return _with_render(G, num_ray_steps=G.cfg.render.num_ray_steps * multiplier)


def without_background(G: Generator) -> Generator:
    """A view of ``G`` that renders its foreground alone: the background model is not composited behind it.

    The foreground keeps the short last interval it was trained with, so what the background would fill
    stays empty (0, or white with ``white_back``), as in the original's foreground/background figures.
    """
    if G.cfg.render.background is None:
        raise ValueError("--no-background: this model has no background model (sphere or plane) to leave out")
    return _with_render(G, draw_background=False)


@torch.no_grad()
def render_batches(G: Generator, ws: Tensor, cameras: Cameras, resolution: int | None = None,
                   deterministic: bool = True, batch_size: int = 16) -> Iterator[GeneratorOutput]:
    """Render ``cameras`` (T of them) in batches of ``batch_size``; yields one GeneratorOutput per batch.

    ws: [1, num_ws, w_dim] — one scene for every camera: its tri-planes are synthesised once and shared by all
    frames; or [T, num_ws, w_dim] — one latent per camera (interpolations, one view per seed), synthesised
    batch by batch. Images are [b, 3, H, W] with H = W = ``resolution`` (default: the model's).
    """
    t = cameras.batch_size
    if ws.shape[0] not in (1, t):
        raise ValueError(f"{ws.shape[0]} latents for {t} cameras: give one latent, or one per camera")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be ≥ 1, got {batch_size}")
    shared = G.synthesize(ws, noise_mode="const") if ws.shape[0] == 1 else None
    device = ws.device
    for start in range(0, t, batch_size):
        idx = slice(start, min(start + batch_size, t))
        cams = take(cameras, idx).to(device)
        if shared is None:
            batch_ws = ws[idx]
            planes = G.synthesize(batch_ws, noise_mode="const")
        else:
            # expand() is a view; the renderer copies only this batch's worth of planes.
            batch_ws = ws.expand(cams.batch_size, -1, -1)
            planes = shared.expand(cams.batch_size, -1, -1, -1)
        yield G.render(planes, cams, resolution=resolution, deterministic=deterministic, ws=batch_ws)


def render_all(G: Generator, ws: Tensor, cameras: Cameras, resolution: int | None = None,
               deterministic: bool = True, batch_size: int = 16) -> GeneratorOutput:
    """``render_batches`` gathered into one GeneratorOutput on the CPU (image [T, 3, H, W], depth, opacity)."""
    return concat_outputs(list(render_batches(G, ws, cameras, resolution, deterministic, batch_size)))


def concat_outputs(outputs: list[GeneratorOutput]) -> GeneratorOutput:
    """Concatenate renders along the batch dimension, on the CPU."""
    return GeneratorOutput(*(
        None if getattr(outputs[0], f.name) is None else torch.cat([getattr(o, f.name).cpu() for o in outputs])
        for f in dataclasses.fields(GeneratorOutput)
    ))
