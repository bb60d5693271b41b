"""``epigraf dataset convert | check | info | faces``: bring your own images with camera poses (docs/method.md §6,
§13)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

from epigraf.cameras import CAMERA_DISTRIBUTIONS
from epigraf.cameras.formats import WORLDS
from epigraf.commands.dataset_builtin import register_builtin
from epigraf.commands.dataset_faces import register_faces
from epigraf.config import PRESETS, CameraConfig, ModelConfig, preset
from epigraf.data.camera_check import check_camera
from epigraf.data.convert import BACKGROUNDS, ConvertOptions, ConvertResult, convert_dataset
from epigraf.data.dataset import ImageDataset
from epigraf.data.metadata import load_json
from epigraf.data.plots import camera_distribution_figure, contact_sheet
from epigraf.data.poses import DEFAULT_WORLD, POSE_FORMATS, load_poses, poses_from_data
from epigraf.data.sources import open_source
from epigraf.data.summary import dataset_summary, format_summary
from epigraf.data.validate import validate_dataset
from epigraf.train.options import label_dim

log = logging.getLogger(__name__)
T = TypeVar("T")
# A look-at point this close to the origin (relative to the camera distance) needs no re-centring.
_ORIGIN_TOLERANCE = 1e-3

_FORMAT_HELP = (
    "pose format: epigraf (dataset.json camera_angles, radians), eg3d (25-number labels: OpenCV cam2world + "
    "normalised intrinsics), opengl / opencv (4×4 cam2world matrices with those camera axes), blender "
    f"(matrix_world or a NeRF transforms.json). Default worlds: {DEFAULT_WORLD}"
)


DATASET_FORMAT = """\
The dataset format (docs/cameras.md, "Dataset format"):
  a folder or zip of square images of one size (any format PIL opens) and optionally a dataset.json:
    {"camera_angles": {"faces/00001": [0.12, 1.55, 0.0]},   relative path without extension -> [yaw, pitch, roll]
     "labels": {"faces/00001": 3}}                           -> a class index (0 to 99,999) or a vector
  Angles are radians: yaw 0 = frontal, pitch from +y (pi/2 = the horizon). `dataset convert` writes this
  format from EG3D, OpenGL/OpenCV matrices or Blender poses; `dataset check` validates it."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("dataset", help="convert, check and inspect image datasets with camera poses",
                              description="Bring your own images: convert poses from other tools, validate a "
                                          "dataset and the camera configuration, and look at it.",
                              epilog=DATASET_FORMAT, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    register_builtin(sub)

    c = sub.add_parser("convert", help="images + poses (any supported format) → our zip with dataset.json")
    c.add_argument("source", type=Path, help="folder or zip of images")
    c.add_argument("out", type=Path, help="output .zip")
    c.add_argument("--poses", type=Path, default=None,
                   help="pose file (.json or .npy); default: the source's own dataset.json (read as --format)")
    c.add_argument("--format", choices=POSE_FORMATS, default="epigraf", help=_FORMAT_HELP)
    c.add_argument("--world", choices=sorted(WORLDS), default=None,
                   help="world axes of the pose file (default: per format)")
    c.add_argument("--center", type=float, nargs=3, metavar=("X", "Y", "Z"), default=None,
                   help="point in the pose file's world that becomes the origin (what the cameras look at)")
    c.add_argument("--resolution", type=int, default=None, help="output side in pixels (Lanczos resize)")
    c.add_argument("--crop", action="store_true", help="centre-crop non-square images to a square")
    c.add_argument("--zero-centre-yaw", action="store_true", help="shift yaw so that its circular mean is 0")
    c.add_argument("--fov", type=float, default=None, help="fov in degrees to store (default: what the poses imply)")
    c.add_argument("--background", choices=sorted(BACKGROUNDS), default="white",
                   help="colour under transparent pixels")
    c.add_argument("--look-at-tolerance", type=float, default=1.0, metavar="DEG",
                   help="warn when an optical axis misses the origin by more than this")
    c.add_argument("--force", action="store_true", help="replace an existing output zip (never the source)")
    c.set_defaults(func=run_convert)

    k = sub.add_parser("check", help="run every validation and the frustum-in-cube check; exit 1 on errors")
    k.add_argument("path", type=Path, help="dataset folder or zip")
    k.add_argument("--preset", choices=PRESETS, default=None, help="take the camera from this preset")
    k.add_argument("--fov", type=float, default=None, help="degrees")
    k.add_argument("--radius", type=float, default=None, help="camera distance from the origin")
    k.add_argument("--ray-start", type=float, default=None, help="near end of the rays (distance from the camera)")
    k.add_argument("--ray-end", type=float, default=None, help="far end of the rays (distance from the camera)")
    k.add_argument("--cube-scale", type=float, default=None, help="side of the tri-plane cube around the origin")
    k.add_argument("--distribution", choices=CAMERA_DISTRIBUTIONS, default=None,
                   help="camera distribution of the generator's cameras")
    k.add_argument("--no-use-labels", dest="use_labels", action="store_false",
                   help="check as `epigraf train --no-use-labels` trains: without the dataset's labels")
    k.add_argument("--headers-only", action="store_true",
                   help="read image headers only (fast) instead of decoding every image")
    k.set_defaults(func=run_check)
    register_faces(sub, k)

    i = sub.add_parser("info", help="counts, labels, pose statistics and pictures of a dataset")
    i.add_argument("path", type=Path, help="dataset folder or zip")
    i.add_argument("--out", type=Path, required=True, help="folder for info.json, cameras.png and samples.png")
    i.add_argument("--samples", type=int, default=32, help="images on the contact sheet")
    i.set_defaults(func=run_info)


def _logging_warnings(fn: Callable[[], T]) -> T:
    """Run ``fn`` and show the warnings it issues as log lines (the CLI's voice) instead of tracebacks."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn()
    for w in caught:
        log.warning("%s", w.message)
    return result


def _source_metadata(path: Path) -> tuple[object, str]:
    """The source's own dataset.json, parsed, and its name (for --format without --poses)."""
    source = open_source(path)
    files = source.metadata_files()
    if len(files) != 1:
        raise ValueError(f"found {len(files)} dataset.json files in {path}: pass the pose file with --poses")
    data, errors = load_json(source.read(files[0]), files[0])
    if errors:
        raise ValueError(errors[0])
    return data, files[0]


def run_convert(args: argparse.Namespace) -> int:
    pose_args = {"world": args.world, "center": args.center, "look_at_tolerance_deg": args.look_at_tolerance}
    poses = None
    if args.poses is not None:
        poses = load_poses(args.poses, args.format, **pose_args)
    elif args.format != "epigraf" or args.world is not None or args.center is not None:
        data, name = _source_metadata(args.source)
        poses = poses_from_data(data, args.format, name, **pose_args)
    options = ConvertOptions(resolution=args.resolution, crop=args.crop, zero_centre_yaw=args.zero_centre_yaw,
                             background=args.background, fov=args.fov)
    result = _logging_warnings(lambda: convert_dataset(args.source, args.out, poses, options,
                                                                       overwrite=args.force))
    for message in result.warnings:
        log.warning("%s", message)
    print(_convert_text(result, args))
    return 0


def _convert_text(result: ConvertResult, args: argparse.Namespace) -> str:
    lines = [f"wrote {result.path}: {result.num_images} images at {result.resolution}×{result.resolution}"]
    if not result.has_cameras:
        lines.append("  no camera poses (a dataset for sampled cameras, e.g. the Megascans presets)")
        return "\n".join(lines)
    fov_source = "--fov" if args.fov is not None else "the poses"
    lines.append("  fov: " + (f"{result.fov:.4f}° (from {fov_source})" if result.fov is not None else
                              "unknown (the poses carry no intrinsics; pass --fov to store it)"))
    lines.append("  radius: " + (f"{result.radius:.4f} (median camera distance)" if result.radius is not None else
                                 "unknown"))
    if result.yaw_centring is not None:
        lines.append(f"  {result.yaw_centring}")
    if result.look_at is not None:
        point, rms = result.look_at
        where = f"({point[0]:.4f}, {point[1]:.4f}, {point[2]:.4f})"
        if np.linalg.norm(point) <= _ORIGIN_TOLERANCE * (result.radius or 1.0):
            lines.append(f"  the optical axes meet at the origin (rms distance {rms:.4g})")
        else:
            lines.append(f"  the optical axes pass closest to {where} in the pose file's world (rms distance "
                         f"{rms:.4g}), not the origin: if the object sits there, re-run with "
                         f"--center {point[0]:.4f} {point[1]:.4f} {point[2]:.4f}")
    lines.append("  stored in dataset.json under \"camera\"; use this fov (and near/far around this radius) for "
                 "training, then run `epigraf dataset check`")
    return "\n".join(lines)


def presets_matching(stored: dict[str, float] | None) -> list[str]:
    """The presets whose camera has the fov and radius a dataset stores (``dataset.json`` "camera")."""
    if not stored or "fov" not in stored or "radius" not in stored:
        return []
    return [name for name in PRESETS
            if math.isclose((cam := preset(name).generator.camera).fov, stored["fov"], rel_tol=1e-3)
            and math.isclose(cam.radius, stored["radius"], rel_tol=1e-3)]


def _camera_config(args: argparse.Namespace, model: ModelConfig | None,
                   stored: dict[str, float] | None) -> tuple[CameraConfig, str]:
    """The camera to check: --preset's, else that of the presets matching the dataset's stored camera (the
    built-in data stores the builtin preset's), else the FFHQ defaults; then the flags' overrides."""
    matching = presets_matching(stored)
    if model is not None:
        base, origin = model.generator.camera, f"preset {args.preset}"
    elif matching:
        base = preset(matching[0]).generator.camera
        origin = f"preset {' / '.join(matching)}, whose fov and radius the dataset stores"
    else:
        base, origin = CameraConfig(), "defaults (the FFHQ camera; --preset NAME checks a preset's)"
    overrides = {name: getattr(args, name) for name in ("fov", "radius", "ray_start", "ray_end", "cube_scale",
                                                        "distribution") if getattr(args, name) is not None}
    if overrides:
        origin += " with " + ", ".join(f"{k}={v}" for k, v in overrides.items())
    camera = dataclasses.replace(base, **overrides)
    if camera.radius <= 0 or camera.cube_scale <= 0:
        raise ValueError(f"radius and cube_scale must be positive, got {camera.radius} and {camera.cube_scale}")
    return camera, origin


def run_check(args: argparse.Namespace) -> int:
    model = preset(args.preset) if args.preset else None
    report = validate_dataset(args.path, decode=not args.headers_only)
    print(report)
    index = report.index
    camera, origin = _camera_config(args, model, index.camera if index is not None else None)
    labels_ok = True
    if model is not None and report.ok:
        # The rule `epigraf train` applies (train.options.label_dim), so both say the same.
        dataset_c_dim = 0 if index is None or index.labels is None else index.labels.shape[1]
        try:
            c_dim = label_dim(args.preset, model.generator.c_dim, dataset_c_dim, args.use_labels)
        except ValueError as err:
            print(f"label error: {err}")
            labels_ok = False
        else:
            print(f"labels: `epigraf train --preset {args.preset}` trains "
                  + (f"class-conditional on the dataset's {c_dim}-dim labels (--no-use-labels: unconditional)"
                     if c_dim else "unconditional" + (" (--no-use-labels)" if dataset_c_dim else "")))
    print(f"camera ({origin}): fov {camera.fov}°, radius {camera.radius}, rays [{camera.ray_start}, "
          f"{camera.ray_end}], cube_scale {camera.cube_scale}, distribution {camera.distribution}")
    if index is None or (index.angles is None and camera.distribution == "custom" and not report.ok):
        print("frustum check skipped: the dataset's poses could not be read (see the errors above)\nFAILED")
        return 1
    check = check_camera(camera, index.angles, index.camera)
    status = "inside" if check.extent <= camera.cube_scale else "OUTSIDE"
    print(f"frustum: corners reach |p|∞ = {check.extent:.4f} over {check.poses}, {status} the cube "
          f"[−{camera.cube_scale}, {camera.cube_scale}]³")
    for title, items in (("camera errors", check.errors), ("camera warnings", check.warnings)):
        if items:
            print(f"{title} ({len(items)}):")
            print("\n".join(f"  - {item}" for item in items))
    ok = report.ok and not check.errors and labels_ok
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


def run_info(args: argparse.Namespace) -> int:
    if args.samples < 1:
        raise ValueError(f"--samples must be positive, got {args.samples}")
    ds = _logging_warnings(lambda: ImageDataset(args.path))
    summary = dataset_summary(ds)
    print(format_summary(summary))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "info.json").write_text(json.dumps(summary, indent=1))
    written = [args.out / "info.json"]
    if ds.has_cameras:
        camera_distribution_figure(ds.camera_angles, title=f"camera distribution of {args.path.name}").save(
            args.out / "cameras.png")
        written.append(args.out / "cameras.png")
    picks = np.unique(np.linspace(0, ds.num_images - 1, min(args.samples, ds.num_images)).round().astype(int))
    contact_sheet([ds.load_image(int(j)) for j in picks]).save(args.out / "samples.png")
    written.append(args.out / "samples.png")
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
