"""Images + poses in any supported format → our dataset: a zip of square PNGs and ``dataset.json``.

The output's ``dataset.json`` holds ``camera_angles`` (radians, our convention), the ``labels`` of an
epigraf input, and ``camera`` {"fov", "radius"}: what the poses imply (median over images), so that
``epigraf dataset check`` can compare it with a training configuration. Everything is checked before a
single file is written; the output is written to a temporary file and renamed, so a failed run
leaves nothing behind.
"""

from __future__ import annotations

import io
import json
import math
import os
import zipfile
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from epigraf.cameras.conventions import YawCentring, angle_errors, yaw_centring_warning, zero_centre_yaw
from epigraf.data.metadata import examples, load_json, match_errors, parse_labels
from epigraf.data.poses import PoseTable, epigraf_poses
from epigraf.data.sources import KeyMatch, Source, image_key, match_keys, open_image, open_source
from epigraf.data.validate import scan_images, validate_dataset
from epigraf.files import atomic_write, check_output_path

BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0)}
# Cameras whose fov or radius differ by more than this (relative) are reported as inconsistent.
_SPREAD_TOLERANCE = 0.01


@dataclass
class ConvertOptions:
    """resolution: output side (default: the images' own, which must then agree); crop: centre-crop
    non-square images to a square; zero_centre_yaw: shift yaw by its circular mean; background: colour
    under transparent pixels; fov: the output fov in degrees, overriding what the poses imply."""

    resolution: int | None = None
    crop: bool = False
    zero_centre_yaw: bool = False
    background: str = "white"
    fov: float | None = None


@dataclass
class ConvertResult:
    """What was written: counts, the camera the poses imply, and the warnings met on the way."""

    path: str
    num_images: int
    resolution: int
    has_cameras: bool
    fov: float | None = None
    radius: float | None = None
    yaw_centring: YawCentring | None = None
    look_at: tuple[np.ndarray, float] | None = None
    warnings: list[str] = field(default_factory=list)


def convert_dataset(source_path: str | os.PathLike, out_path: str | os.PathLike, poses: PoseTable | None,
                    options: ConvertOptions | None = None, *, overwrite: bool = False) -> ConvertResult:
    """Convert images (folder or zip) with ``poses`` (None: the source's own dataset.json, if any) into a
    zip at ``out_path``. Problems raise ValueError (each check's problems in one message) before anything
    is written; the written dataset is validated again. An existing ``out_path`` is replaced only with
    ``overwrite``, and never when it is the source."""
    options = options or ConvertOptions()
    out_path = os.fspath(out_path)
    if not out_path.endswith(".zip"):
        raise ValueError(f"the output must be a .zip file, got {out_path}")
    check_output_path(out_path, [source_path], overwrite)
    if options.background not in BACKGROUNDS:
        raise ValueError(f"background must be one of {sorted(BACKGROUNDS)}, got {options.background!r}")
    if options.resolution is not None and options.resolution < 1:
        raise ValueError(f"resolution must be positive, got {options.resolution}")
    source = open_source(source_path)
    names = source.images()
    if not names:
        raise ValueError(f"no images found in {source_path}")
    result = ConvertResult(path=out_path, num_images=len(names), resolution=0, has_cameras=False)
    if poses is None:
        poses = _own_poses(source)
    side, sizes = _plan_sizes(source, names, options)
    result.resolution = side
    angles, radius, fov, labels = _match(poses, names, result) if poses is not None else (None, None, None, None)
    if angles is not None:
        angles = _checked_angles(angles, names, options, result)
        result.has_cameras = True
        result.radius = _consensus(radius, "camera distances (radius)", result)
        result.look_at = poses.look_at
        result.warnings.extend(poses.conversion.issues if poses.conversion is not None else [])
        if fov is not None and poses.fov_is_horizontal:
            fov = np.array([_crop_fov(f, *sizes[n]) for f, n in zip(fov, names, strict=True)])
    result.fov = options.fov if options.fov is not None else _consensus(fov, "fields of view", result)
    _write(source, names, out_path, side, options, _metadata(names, angles, labels, result))
    report = validate_dataset(out_path)
    report.raise_for_errors()
    result.warnings.extend(w for w in report.warnings if w not in result.warnings)
    return result


def _own_poses(source: Source) -> PoseTable | None:
    files = source.metadata_files()
    if len(files) > 1:
        raise ValueError(f"found {len(files)} dataset.json files in the source ({examples(files)}); keep one or "
                         "pass --poses")
    if not files:
        return None
    data, errors = load_json(source.read(files[0]), files[0])
    if errors:
        raise ValueError(errors[0])
    if data.get("camera_angles") is None and data.get("labels") is None:
        return None
    if data.get("camera_angles") is None:
        return PoseTable(keys=None, angles=np.zeros((0, 3)), labels=data["labels"])
    return epigraf_poses(data, files[0])


def _plan_sizes(source: Source, names: list[str], options: ConvertOptions) -> tuple[int, dict[str, tuple[int, int]]]:
    """Check every header against the options; return the output side and the input sizes."""
    scan = scan_images(source, names)
    errors = scan.errors()
    non_square = [n for n, (w, h) in scan.sizes.items() if w != h]
    if non_square and not options.crop:
        w, h = scan.sizes[non_square[0]]
        errors.append(f"{len(non_square)} images are not square, e.g. {non_square[0]!r} ({w}×{h}); pass --crop to "
                      "centre-crop them")
    sides = sorted({min(w, h) for w, h in scan.sizes.values()})
    if options.resolution is None and len(sides) > 1:
        errors.append(f"images have different sizes (square sides {sides[:5]}{' …' if len(sides) > 5 else ''}); "
                      "pass --resolution R")
    if errors:
        raise ValueError("; ".join(errors))
    return options.resolution or sides[0], scan.sizes


def _match(poses: PoseTable, names: list[str], result: ConvertResult
           ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None, dict[str, object] | None]:
    """Per-image angles [N, 3], radius [N], fov [N] (None where unknown) and labels {name → label}."""
    keys = [image_key(n) for n in names]
    labels = _match_labels(poses.labels, names, keys) if poses.labels is not None else None
    if len(poses.angles) == 0 and poses.keys is None:
        return None, None, None, labels
    if poses.keys is None:
        if len(poses.angles) != len(names):
            raise ValueError(f"{len(poses.angles)} poses but {len(names)} images: an ordered pose array is matched to "
                             "the images sorted by path, so the counts must agree")
        order = np.arange(len(names))
    else:
        match = match_keys(poses.keys, keys)
        if match.unmatched:
            # Pose files often cover more than the images at hand (a train split, removed images).
            result.warnings.append(f"{len(match.unmatched)} poses match no image and are left out, e.g. "
                                   f"{examples(match.unmatched)}")
        errors = match_errors("pose", KeyMatch(match.matched, [], match.ambiguous), names, keys)
        if errors:
            raise ValueError("; ".join(errors))
        row = {match.matched[k]: i for i, k in enumerate(poses.keys) if k in match.matched}
        order = np.array([row[k] for k in keys])
    radius = None if poses.radius is None else poses.radius[order]
    fov = None if poses.fov is None else poses.fov[order]
    return poses.angles[order], radius, fov, labels


def _match_labels(raw: object, names: list[str], keys: list[str]) -> dict[str, object]:
    parsed = parse_labels(raw)
    match = match_keys(parsed.keys, keys)
    errors = parsed.errors + match_errors("labels", match, names, keys)
    if errors:
        raise ValueError("; ".join(errors))
    by_key = {image: parsed.values[k] for k, image in match.matched.items()}
    return {n: by_key[k] for n, k in zip(names, keys, strict=True)}


def _checked_angles(angles: np.ndarray, names: list[str], options: ConvertOptions,
                    result: ConvertResult) -> np.ndarray:
    errors = angle_errors(angles, names)
    if errors:
        raise ValueError("; ".join(errors))
    if options.zero_centre_yaw:
        angles, result.yaw_centring = zero_centre_yaw(angles, warn=False)
        if not result.yaw_centring.applied:
            result.warnings.append(str(result.yaw_centring))
    else:
        warning = yaw_centring_warning(angles)
        if warning:
            result.warnings.append(warning)
    return angles


def _crop_fov(fov_x: float, width: int, height: int) -> float:
    """Horizontal fov of a width×height image → fov of its centred square crop (side min(width, height));
    unchanged for square images."""
    return math.degrees(2 * math.atan(math.tan(math.radians(fov_x) / 2) * min(width, height) / width))


def _consensus(values: np.ndarray | None, what: str, result: ConvertResult) -> float | None:
    """The median of per-image values, with a warning when they disagree (EpiGRAF has one camera)."""
    if values is None:
        return None
    median = float(np.median(values))
    lo, hi = float(np.min(values)), float(np.max(values))
    if hi - lo > _SPREAD_TOLERANCE * median:
        result.warnings.append(f"the {what} differ between images ({lo:.4g} to {hi:.4g}); EpiGRAF uses one value, the "
                               f"median {median:.4g}")
    return median


def _metadata(names: list[str], angles: np.ndarray | None, labels: dict[str, object] | None,
              result: ConvertResult) -> dict[str, object]:
    out_names = [image_key(n) + ".png" for n in names]
    meta: dict[str, object] = {}
    if angles is not None:
        meta["camera_angles"] = {o: [float(v) for v in a] for o, a in zip(out_names, angles, strict=True)}
    if labels is not None:
        meta["labels"] = {o: labels[n] for o, n in zip(out_names, names, strict=True)}
    camera = {k: v for k, v in (("fov", result.fov), ("radius", result.radius)) if v is not None}
    if camera:
        meta["camera"] = camera
    return meta


def prepare_image(image: Image.Image, side: int, crop: bool, background: tuple[int, int, int]) -> Image.Image:
    """Any PIL image → RGB side×side: alpha composited onto ``background``, centre-cropped to a square when
    ``crop``, resized with Lanczos when the size differs."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, background)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        image = flat
    else:
        image = image.convert("RGB")
    if crop:
        w, h = image.size
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        image = image.crop((left, top, left + s, top + s))
    if image.size != (side, side):
        image = image.resize((side, side), Image.Resampling.LANCZOS)
    return image


def _write(source: Source, names: list[str], out_path: str, side: int, options: ConvertOptions,
           meta: dict[str, object]) -> None:
    # PNGs are already compressed: storing them is as small and much faster.
    with atomic_write(out_path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in names:
            try:
                with open_image(source, name) as im:
                    out = prepare_image(im, side, options.crop, BACKGROUNDS[options.background])
            except (OSError, SyntaxError, Image.DecompressionBombError) as err:
                raise ValueError(f"cannot decode image {name!r}: {err}") from err
            buf = io.BytesIO()
            out.save(buf, format="PNG")
            zf.writestr(image_key(name) + ".png", buf.getvalue())
        zf.writestr("dataset.json", json.dumps(meta, indent=1))
