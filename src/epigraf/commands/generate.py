"""``epigraf generate``: render views of a trained checkpoint or of a freshly initialised preset."""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import numpy as np
import torch

from epigraf.checkpoint import load_checkpoint
from epigraf.config import PRESETS, preset
from epigraf.export.images import depth_to_uint8, save_png, to_uint8
from epigraf.nn.generator import Generator

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("generate", help="render views of a generator to PNG files")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="an epigraf checkpoint (.safetensors)")
    src.add_argument("--preset", choices=PRESETS, help="a randomly initialised generator of this preset")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="latent seeds, one image each")
    p.add_argument("--yaw", type=float, default=0.0, help="radians, 0 = frontal")
    p.add_argument("--pitch", type=float, default=math.pi / 2, help="radians from +y, π/2 = horizon")
    p.add_argument("--fov", type=float, default=None, help="degrees (default: the model's)")
    p.add_argument("--radius", type=float, default=None, help="camera distance (default: the model's)")
    p.add_argument("--resolution", type=int, default=None, help="output side in pixels (default: the model's)")
    p.add_argument("--truncation", type=float, default=0.7, help="truncation ψ")
    p.add_argument("--class-index", type=int, default=None, help="class of a conditional model")
    p.add_argument("--depth", action="store_true", help="also save the depth map")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=Path("generated"), help="output folder")
    p.set_defaults(func=run)


def _generator(args: argparse.Namespace) -> Generator:
    if args.checkpoint is not None:
        return load_checkpoint(args.checkpoint, args.device).G_ema
    torch.manual_seed(0)
    return Generator(preset(args.preset).generator).to(args.device).eval()


def run(args: argparse.Namespace) -> int:
    if args.resolution is not None and args.resolution < 2:
        raise ValueError(f"--resolution must be ≥ 2, got {args.resolution}")
    G = _generator(args)
    if G.c_dim > 0 and args.class_index is None:
        raise ValueError(f"this model is conditional on {G.c_dim} classes: pass --class-index")
    if args.class_index is not None and not 0 <= args.class_index < G.c_dim:
        raise ValueError(f"--class-index must be in [0, {G.c_dim}), got {args.class_index}")
    cam = G.cfg.camera
    for seed in args.seeds:
        z = torch.from_numpy(np.random.RandomState(seed).randn(1, G.z_dim)).float().to(args.device)
        c = None if G.c_dim == 0 else torch.nn.functional.one_hot(
            torch.tensor([args.class_index]), G.c_dim).float().to(args.device)
        angles = torch.tensor([[args.yaw, args.pitch, 0.0]], device=args.device)
        with torch.no_grad():
            out = G(z, c, angles, truncation_psi=args.truncation, deterministic=True,
                    resolution=args.resolution, fov=args.fov, radius=args.radius)
        path = save_png(to_uint8(out.image)[0], args.out / f"seed{seed:04d}.png")
        log.info("wrote %s", path)
        if args.depth:
            save_png(depth_to_uint8(out.depth, cam.ray_start, cam.ray_end)[0], args.out / f"seed{seed:04d}_depth.png")
    return 0
