"""``epigraf generate``: images (and depth / normal maps) of seeds from explicit cameras, or a seeds × yaws grid.

The model, latent and render flags come from ``commands.model_arguments``, shared with ``epigraf video`` and
``epigraf mesh``.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import numpy as np
import torch

from epigraf.cameras.paths import points, take
from epigraf.commands.model_arguments import (
    add_latent_arguments,
    add_model_arguments,
    add_render_arguments,
    check_resolution,
    prepare,
    render_view,
)
from epigraf.export.images import depth_to_uint8, image_grid, normals_to_uint8, save_png, to_uint8
from epigraf.inference import concat_outputs, render_all, render_batches
from epigraf.nn.generator import Generator, GeneratorOutput

log = logging.getLogger(__name__)

GRID_YAWS = (-0.3, 0.0, 0.3)


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
    p.add_argument("--depth", action="store_true",
                   help="also save depth maps: the object's expected depth from near (white) to far (dark grey), "
                        "background black (README: Depth maps)")
    p.add_argument("--depth-format", choices=("png", "npy"), default=None,
                   help="with --depth: png (default), or npy for the renderer's raw float32 maps instead, "
                        "<name>_depth.npy (Σ w·t along unit rays) and <name>_opacity.npy (Σ w)")
    p.add_argument("--normals", action="store_true",
                   help="also save normal maps (camera space from the depth map; RGB = (n + 1) / 2, background "
                        "mid-grey)")
    p.add_argument("--out", type=Path, default=Path("generated"), help="output folder")
    p.set_defaults(func=run)


def _maps(out: GeneratorOutput, fov: torch.Tensor, G: Generator, args: argparse.Namespace) -> dict[str, np.ndarray]:
    """The files to save for a batch of views: suffix → uint8 [B, H, W, 3] (.png) or float32 [B, H, W, 1] (.npy)."""
    maps = {".png": to_uint8(out.image)}
    if args.depth and args.depth_format == "npy":
        maps["_depth.npy"] = out.depth.float().cpu().permute(0, 2, 3, 1).numpy()
        maps["_opacity.npy"] = out.opacity.float().cpu().permute(0, 2, 3, 1).numpy()
    elif args.depth:
        cam = G.cfg.camera
        maps["_depth.png"] = depth_to_uint8(out.depth, cam.ray_start, cam.ray_end, opacity=out.opacity)
    if args.normals:
        maps["_normals.png"] = normals_to_uint8(out.depth, fov, opacity=out.opacity)
    return maps


def _save(array: np.ndarray, path: Path) -> Path:
    """One map of ``_maps``: a PNG, or an .npy of its single channel [H, W]."""
    if path.suffix != ".npy":
        return save_png(array, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array[..., 0])
    return path


def run(args: argparse.Namespace) -> int:
    check_resolution(args.resolution)
    if args.depth_format is not None and not args.depth:
        raise ValueError("--depth-format needs --depth")
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
            log.info("wrote %s", _save(image_grid(images, len(views.fov)), args.out / f"grid{suffix}"))
        return 0
    cameras = take(points([args.yaw], args.pitch, fov, radius), [0] * len(seeds))
    done = 0
    # Saved batch by batch, so long seed ranges never hold more than one batch of renders.
    for out in render_batches(G, ws, cameras, **render):
        batch = seeds[done:done + len(out.image)]
        for suffix, images in _maps(out, cameras.fov[done:done + len(batch)], G, args).items():
            for seed, image in zip(batch, images, strict=True):
                log.info("wrote %s", _save(image, args.out / f"seed{seed:04d}{suffix}"))
        done += len(batch)
    return 0
