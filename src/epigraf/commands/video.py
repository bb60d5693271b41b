"""``epigraf video``: camera-path videos of seeds, a grid of them, or a W-space interpolation between seeds.

Each seed's tri-planes are synthesised once and rendered from every camera of the path; an interpolation
video synthesises the tri-planes of each frame's interpolated latent.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from epigraf.cameras.paths import PATHS, camera_path
from epigraf.commands.model_arguments import (
    add_latent_arguments,
    add_model_arguments,
    add_render_arguments,
    check_resolution,
    prepare,
    render_view,
)
from epigraf.export.images import image_grid, to_uint8
from epigraf.export.video import resolve_format, video_path, write_video
from epigraf.inference import render_batches
from epigraf.progress import track
from epigraf.seeds import interpolate_ws

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("video", help="render camera-path or latent-interpolation videos")
    add_model_arguments(p)
    add_latent_arguments(p)
    add_render_arguments(p)
    p.add_argument("--path", choices=PATHS, default="front_circle", help="camera path")
    p.add_argument("--frames", type=int, default=64,
                   help="frames per video (with --interp: frames per transition between consecutive seeds)")
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--grid", type=int, default=None, metavar="N",
                   help="one video tiling all seeds, N per row (default: one video per seed)")
    p.add_argument("--interp", action="store_true",
                   help="one video interpolating linearly in W through the seeds in order")
    p.add_argument("--format", choices=("auto", "mp4", "gif", "frames"), default="auto",
                   help="auto = mp4 when the video extra (imageio-ffmpeg) is installed, else gif")
    p.add_argument("--out", type=Path, default=Path("videos"), help="output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_resolution(args.resolution)
    if args.frames < 1:
        raise ValueError(f"--frames must be ≥ 1, got {args.frames}")
    if args.grid is not None and args.grid < 1:
        raise ValueError(f"--grid must be ≥ 1 video per row, got {args.grid}")
    if args.grid is not None and args.interp:
        raise ValueError("--grid and --interp do not combine: an interpolation is one video")
    fmt = resolve_format(args.format)  # before rendering: a missing extra fails fast
    G, seeds, ws = prepare(args)
    G = render_view(G, args)
    render = {"resolution": args.resolution, "deterministic": not args.random, "batch_size": args.batch_size}
    cam = G.cfg.camera

    def frames(latents, num_frames: int, name: str) -> Iterator[np.ndarray]:
        cameras = camera_path(args.path, num_frames, cam.fov, cam.radius)
        for images in track((to_uint8(out.image) for out in render_batches(G, latents, cameras, **render)),
                            num_frames, name, "frame"):
            yield from images

    def write(stream: Iterator[np.ndarray], name: str) -> None:
        log.info("wrote %s", write_video(stream, video_path(args.out / name, fmt), args.fps))

    if args.interp:
        if len(seeds) < 2:
            raise ValueError("--interp needs at least two seeds")
        num_frames = args.frames * (len(seeds) - 1) + 1  # every seed lands exactly on a frame
        name = f"interp_{args.path}"
        write(frames(interpolate_ws(ws, num_frames), num_frames, name), name)
    elif args.grid is not None:
        videos = [np.stack(list(frames(ws[i:i + 1], args.frames, f"seed {seed}")))  # [T, H, W, 3] each
                  for i, seed in enumerate(seeds)]
        tiled = np.stack(videos, axis=1)  # [T, N, H, W, 3]
        write((image_grid(step, args.grid) for step in tiled), f"grid_{args.path}")
    else:
        for i, seed in enumerate(seeds):
            name = f"seed{seed:04d}_{args.path}"
            write(frames(ws[i:i + 1], args.frames, name), name)
    return 0
