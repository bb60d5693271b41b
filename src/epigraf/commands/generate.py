"""``epigraf generate``: images (and depth / normal maps) of seeds from explicit cameras, or a seeds × yaws grid.

The model and latent flags defined here (``add_model_arguments``, ``add_latent_arguments``, ``add_render_arguments``)
are shared with ``epigraf video`` and ``epigraf mesh``.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import numpy as np
import torch

from epigraf.camera_paths import points, take
from epigraf.checkpoint import load_checkpoint
from epigraf.commands.arguments import add_device_argument
from epigraf.config import PRESETS, preset
from epigraf.export.images import depth_to_uint8, image_grid, save_png, to_uint8
from epigraf.inference import (
    DEFAULT_RAY_STEP_MULTIPLIER,
    DEFAULT_TRUNCATION,
    concat_outputs,
    depth_normals,
    render_all,
    render_batches,
    with_ray_steps,
    without_background,
)
from epigraf.nn.generator import Generator, GeneratorOutput
from epigraf.seeds import parse_seeds, seed_classes, seeds_to_ws

log = logging.getLogger(__name__)

# The original's inference scripts render with twice the training ray steps (docs/method.md §7.2).
GRID_YAWS = (-0.3, 0.0, 0.3)


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="an epigraf checkpoint (.safetensors)")
    src.add_argument("--preset", choices=PRESETS, help="a randomly initialised generator of this preset")
    add_device_argument(p)


def add_latent_arguments(p: argparse.ArgumentParser, default_seeds: str = "0") -> None:
    p.add_argument("--seeds", nargs="+", default=[default_seeds],
                   help="latent seeds and inclusive ranges, e.g. 0-7,12 (z = RandomState(seed).randn)")
    p.add_argument("--truncation", type=float, default=DEFAULT_TRUNCATION,
                   help="truncation ψ (towards the class mean w for conditional models)")
    p.add_argument("--class-index", type=int, default=None,
                   help="class of a conditional model (default: a random class per seed)")


def add_render_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resolution", type=int, default=None, help="output side in pixels (default: the model's)")
    p.add_argument("--ray-step-multiplier", type=int, default=DEFAULT_RAY_STEP_MULTIPLIER,
                   help="render with num_ray_steps × this (coarse and fine)")
    p.add_argument("--random", action="store_true",
                   help="the original's random ray sampling (jitter, importance samples) instead of deterministic")
    p.add_argument("--batch-size", type=int, default=16, help="views rendered per batch")
    p.add_argument("--no-background", action="store_true",
                   help="leave out the background model (sphere or plane): the foreground alone")


def render_view(G: Generator, args: argparse.Namespace) -> Generator:
    """G as the render flags ask: ray steps × ``--ray-step-multiplier``, without background if asked."""
    G = with_ray_steps(G, args.ray_step_multiplier)
    return without_background(G) if args.no_background else G


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("generate", help="render views of a generator to PNG files")
    add_model_arguments(p)
    add_latent_arguments(p)
    add_render_arguments(p)
    p.add_argument("--yaw", type=float, default=0.0, help="radians, 0 = frontal")
    p.add_argument("--pitch", type=float, default=math.pi / 2, help="radians from +y, π/2 = horizon")
    p.add_argument("--fov", type=float, default=None, help="degrees (default: the model's)")
    p.add_argument("--radius", type=float, default=None, help="camera distance (default: the model's)")
    p.add_argument("--grid", action="store_true", help="one grid image: a row per seed, a column per --grid-yaws")
    p.add_argument("--grid-yaws", type=float, nargs="+", default=list(GRID_YAWS), help="yaws of the grid columns")
    p.add_argument("--depth", action="store_true", help="also save depth maps (near = white)")
    p.add_argument("--normals", action="store_true",
                   help="also save normal maps (camera space from depth gradients; RGB = (n + 1) / 2)")
    p.add_argument("--out", type=Path, default=Path("generated"), help="output folder")
    p.set_defaults(func=run)


def load_generator(args: argparse.Namespace) -> Generator:
    """G_ema of ``--checkpoint``, or a generator of ``--preset`` initialised with torch seed 0."""
    if args.checkpoint is not None:
        return load_checkpoint(args.checkpoint, args.device).G_ema
    torch.manual_seed(0)
    return Generator(preset(args.preset).generator).to(args.device).eval()


def check_resolution(resolution: int | None) -> None:
    if resolution is not None and resolution < 2:
        raise ValueError(f"--resolution must be ≥ 2, got {resolution}")


def prepare(args: argparse.Namespace) -> tuple[Generator, list[int], torch.Tensor]:
    """The generator and the truncated ws [N, num_ws, w_dim] of ``--seeds`` (logging each seed's class)."""
    seeds = parse_seeds(args.seeds)
    G = load_generator(args)
    classes = seed_classes(seeds, G.z_dim, G.c_dim, args.class_index)
    if classes:
        log.info("classes: %s", ", ".join(f"seed {s} → {k}" for s, k in zip(seeds, classes, strict=True)))
    return G, seeds, seeds_to_ws(G, seeds, args.truncation, args.class_index)


def _maps(out: GeneratorOutput, fov: torch.Tensor, G: Generator, args: argparse.Namespace) -> dict[str, np.ndarray]:
    """The images to save for a batch of views: suffix → uint8 [B, H, W, 3]."""
    maps = {"": to_uint8(out.image)}
    if args.depth:
        maps["_depth"] = depth_to_uint8(out.depth, G.cfg.camera.ray_start, G.cfg.camera.ray_end)
    if args.normals:
        maps["_normals"] = to_uint8(depth_normals(out.depth, fov))
    return maps


def run(args: argparse.Namespace) -> int:
    check_resolution(args.resolution)
    G, seeds, ws = prepare(args)
    G = render_view(G, args)
    cam = G.cfg.camera
    fov = cam.fov if args.fov is None else args.fov
    radius = cam.radius if args.radius is None else args.radius
    render = {"resolution": args.resolution, "deterministic": not args.random, "batch_size": args.batch_size}
    if args.grid:
        views = points(args.grid_yaws, args.pitch, fov, radius)
        # One latent at a time: its tri-planes are synthesised once and rendered from every yaw.
        out = concat_outputs([render_all(G, ws[i:i + 1], views, **render) for i in range(len(seeds))])
        for suffix, images in _maps(out, views.fov.repeat(len(seeds)), G, args).items():
            log.info("wrote %s", save_png(image_grid(images, len(views.fov)), args.out / f"grid{suffix}.png"))
        return 0
    cameras = take(points([args.yaw], args.pitch, fov, radius), [0] * len(seeds))
    done = 0
    # Saved batch by batch, so long seed ranges never hold more than one batch of renders.
    for out in render_batches(G, ws, cameras, **render):
        batch = seeds[done:done + len(out.image)]
        for suffix, images in _maps(out, cameras.fov[done:done + len(batch)], G, args).items():
            for seed, image in zip(batch, images, strict=True):
                log.info("wrote %s", save_png(image, args.out / f"seed{seed:04d}{suffix}.png"))
        done += len(batch)
    return 0
