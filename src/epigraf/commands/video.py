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
import torch

from epigraf.cameras.paths import PATHS, camera_path
from epigraf.commands.model_arguments import (
    add_latent_arguments,
    add_model_arguments,
    add_render_arguments,
    check_resolution,
    prepare,
    render_view,
)
from epigraf.export.images import depth_to_uint8, image_grid, normals_to_uint8, to_uint8
from epigraf.export.video import resolve_format, video_path, write_video
from epigraf.inference import render_batches
from epigraf.nn.generator import GeneratorOutput
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
    p.add_argument("--fps", type=float, default=30.0, help="frames per second")
    p.add_argument("--grid", type=int, default=None, metavar="N",
                   help="one video tiling all seeds, N per row (default: one video per seed)")
    p.add_argument("--interp", action="store_true",
                   help="one video interpolating linearly in W through the seeds in order")
    p.add_argument("--depth", action="store_true",
                   help="also a depth video per video, <name>_depth, encoded as `epigraf generate --depth`")
    p.add_argument("--normals", action="store_true",
                   help="also a normal-map video per video, <name>_normals, as `epigraf generate --normals`")
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

    def batches(latents, num_frames: int, name: str) -> Iterator[dict[str, np.ndarray]]:
        """Per batch of frames, suffix → uint8 [b, H, W, 3]: "" the images, "_depth" / "_normals" as asked."""
        cameras = camera_path(args.path, num_frames, cam.fov, cam.radius)

        def maps(out: GeneratorOutput, fov: torch.Tensor) -> dict[str, np.ndarray]:
            found = {"": to_uint8(out.image)}
            if args.depth:
                found["_depth"] = depth_to_uint8(out.depth, cam.ray_start, cam.ray_end, opacity=out.opacity)
            if args.normals:
                found["_normals"] = normals_to_uint8(out.depth, fov, opacity=out.opacity)
            return found

        def rendered() -> Iterator[dict[str, np.ndarray]]:
            done = 0
            for out in render_batches(G, latents, cameras, **render):
                yield maps(out, cameras.fov[done:done + len(out.image)])
                done += len(out.image)

        yield from track(rendered(), num_frames, name, "frame", count=lambda found: len(found[""]))

    def write(stream: Iterator[np.ndarray], name: str) -> None:
        log.info("wrote %s", write_video(stream, video_path(args.out / name, fmt), args.fps))

    def write_all(stream: Iterator[dict[str, np.ndarray]], name: str) -> None:
        """The image video streamed as it renders; depth and normal frames kept until it is written."""
        kept: dict[str, list[np.ndarray]] = {}

        def images() -> Iterator[np.ndarray]:
            for maps in stream:
                for suffix, frames in maps.items():
                    if suffix:
                        kept.setdefault(suffix, []).append(frames)
                yield from maps[""]

        write(images(), name)
        for suffix, parts in kept.items():
            write(iter(np.concatenate(parts)), name + suffix)

    if args.interp:
        if len(seeds) < 2:
            raise ValueError("--interp needs at least two seeds")
        num_frames = args.frames * (len(seeds) - 1) + 1  # every seed lands exactly on a frame
        name = f"interp_{args.path}"
        write_all(batches(interpolate_ws(ws, num_frames), num_frames, name), name)
    elif args.grid is not None:
        videos: dict[str, list[np.ndarray]] = {}  # suffix → per seed [T, H, W, 3]
        for i, seed in enumerate(seeds):
            rendered = list(batches(ws[i:i + 1], args.frames, f"seed {seed}"))
            for suffix in rendered[0]:
                videos.setdefault(suffix, []).append(np.concatenate([maps[suffix] for maps in rendered]))
        for suffix, per_seed in videos.items():
            tiled = np.stack(per_seed, axis=1)  # [T, N, H, W, 3]
            write((image_grid(step, args.grid) for step in tiled), f"grid_{args.path}{suffix}")
    else:
        for i, seed in enumerate(seeds):
            name = f"seed{seed:04d}_{args.path}"
            write_all(batches(ws[i:i + 1], args.frames, name), name)
    return 0
