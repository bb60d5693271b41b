"""The flags that name a model, its latents and how to render them, and reading them: shared by ``epigraf
generate``, ``epigraf video`` and ``epigraf mesh``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from epigraf.checkpoint import load_checkpoint
from epigraf.commands.arguments import add_device_argument
from epigraf.config import PRESETS, preset
from epigraf.inference import DEFAULT_RAY_STEP_MULTIPLIER, DEFAULT_TRUNCATION, with_ray_steps, without_background
from epigraf.nn.generator import Generator
from epigraf.seeds import parse_seeds, seed_classes, seeds_to_ws

log = logging.getLogger(__name__)


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
    # The original's inference scripts render with twice the training ray steps (docs/method.md §7.2).
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
