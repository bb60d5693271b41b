"""Reading camera poses in the formats ``epigraf dataset convert`` accepts, into our angles (docs/method.md §13).

Formats (``POSE_FORMATS``) and the containers each accepts:

* ``epigraf`` — a dataset.json-like JSON object: ``camera_angles`` {path → [yaw, pitch, roll]} (radians),
  optional ``labels`` and ``camera`` {"fov", "radius"}, carried over.
* ``eg3d`` — EG3D's dataset.json ``{"labels": [[path, [25 numbers]], …]}`` (or a {path → 25 numbers}
  mapping), or an ordered .npy array [N, 25].
* ``opengl`` / ``opencv`` — cam2world 4×4 (or 3×4) matrices with those camera axes, world = ours unless
  told otherwise: a JSON {path → matrix}, a JSON list of matrices, or an ordered .npy [N, 4, 4].
* ``blender`` — Blender camera ``matrix_world`` (OpenGL camera axes, Z-up world), in any container of
  the matrix formats or as a NeRF-style ``transforms.json`` {"camera_angle_x": rad, "frames":
  [{"file_path", "transform_matrix"}]}, whose ``camera_angle_x`` gives the (horizontal) fov.

An ordered array or list is matched to the images sorted by path; a mapping is matched by key
(``epigraf.data.sources.match_keys``).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from epigraf.cameras.conventions import CameraPoseWarning, PoseConversion
from epigraf.cameras.formats import eg3d_to_angles, estimate_look_at, matrices_to_angles
from epigraf.data.metadata import parse_camera, parse_camera_angles

POSE_FORMATS = ("epigraf", "eg3d", "opengl", "opencv", "blender")
DEFAULT_WORLD = {"eg3d": "eg3d", "opengl": "epigraf", "opencv": "epigraf", "blender": "blender"}


@dataclass
class PoseTable:
    """Poses read from a file, in our convention.

    keys: [N] paths as written in the file, or None for an ordered array (matched to sorted images);
    angles: float64 [N, 3]; radius: [N] or None (angles-only input without a stored camera); fov: [N]
    degrees or None; fov_is_horizontal: fov spans the image width (``transforms.json``), so it changes
    when a non-square image is cropped; labels: raw ``labels`` of an epigraf file; conversion: per-pose
    diagnostics of matrix formats; look_at: (point [3], rms) where the optical axes meet, in the file's
    world (what ``center`` takes).
    """

    keys: list[str] | None
    angles: np.ndarray
    radius: np.ndarray | None = None
    fov: np.ndarray | None = None
    fov_is_horizontal: bool = False
    labels: Any = None
    conversion: PoseConversion | None = None
    look_at: tuple[np.ndarray, float] | None = None


def load_poses(path: str | os.PathLike, fmt: str, *, world: str | ArrayLike | None = None,
               center: ArrayLike | None = None, look_at_tolerance_deg: float = 1.0) -> PoseTable:
    """Read a pose file of format ``fmt`` (see the module docstring) and convert it to our angles.

    world: the file's world axes (default per format, ``DEFAULT_WORLD``); center: the point, in the file's
    world, that becomes our origin. Pose warnings (not look-at, roll, off-centre principal point) are
    collected in ``PoseTable.conversion.issues`` instead of being issued.
    """
    return poses_from_data(_load_container(os.fspath(path)), fmt, os.fspath(path), world=world, center=center,
                           look_at_tolerance_deg=look_at_tolerance_deg)


def poses_from_data(data: Any, fmt: str, name: str, *, world: str | ArrayLike | None = None,
                    center: ArrayLike | None = None, look_at_tolerance_deg: float = 1.0) -> PoseTable:
    """``load_poses`` for already-loaded contents (parsed JSON or an array); ``name`` labels errors."""
    if fmt not in POSE_FORMATS:
        raise ValueError(f"unknown pose format {fmt!r}; choose from {POSE_FORMATS}")
    if fmt == "epigraf":
        if world is not None or center is not None:
            raise ValueError("--world and --center apply to matrix formats; epigraf angles are already in our world")
        return epigraf_poses(data, name)
    world = DEFAULT_WORLD[fmt] if world is None else world
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CameraPoseWarning)
        if fmt == "eg3d":
            keys, labels = _eg3d_entries(data)
            conv = eg3d_to_angles(labels, world=world, center=center, look_at_tolerance_deg=look_at_tolerance_deg)
            matrices, axes, fov_x = labels.reshape(-1, 25)[:, :16].reshape(-1, 4, 4), "opencv", None
        else:
            keys, matrices, fov_x = _matrix_entries(data, blender=fmt == "blender")
            axes = "opencv" if fmt == "opencv" else "opengl"
            conv = matrices_to_angles(matrices, axes=axes, world=world, center=center,
                                      look_at_tolerance_deg=look_at_tolerance_deg)
    conv.issues = []  # rebuilt from what was caught: it also holds the intrinsics warnings
    for w in caught:
        if issubclass(w.category, CameraPoseWarning):
            conv.issues.append(str(w.message))
        else:
            warnings.warn(w.message, w.category, stacklevel=2)
    n = len(conv.radius)
    fov = conv.fov if fov_x is None else np.full(n, fov_x)
    return PoseTable(keys, conv.angles, conv.radius, fov, fov_is_horizontal=fov_x is not None, conversion=conv,
                     look_at=estimate_look_at(matrices, axes) if n > 1 else None)


def _load_container(path: str) -> Any:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pose file not found: {path}")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except ValueError as err:
            raise ValueError(f"{path}: not a plain numeric .npy array ({err})") from None
    if ext == ".json":
        with open(path, encoding="utf-8") as fh:
            try:
                return json.load(fh)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} is not valid JSON: {err}") from None
    raise ValueError(f"pose file {path} must be .json or .npy")


def epigraf_poses(data: Any, path: str) -> PoseTable:
    """A parsed dataset.json-like object (``camera_angles``, ``labels``, ``camera``) → PoseTable."""
    if not isinstance(data, dict) or data.get("camera_angles") is None:
        raise ValueError(f"{path} has no 'camera_angles'; is it another format (--format eg3d/opengl/opencv/blender)?")
    parsed = parse_camera_angles(data["camera_angles"])
    if parsed.errors:
        raise ValueError(f"{path}: " + "; ".join(parsed.errors))
    camera, errors = parse_camera(data.get("camera"))
    if errors:
        raise ValueError(f"{path}: " + "; ".join(errors))
    keys = list(parsed.values)
    n = len(keys)
    angles = np.stack([parsed.values[k] for k in keys]) if keys else np.zeros((0, 3))
    radius = np.full(n, camera["radius"]) if camera and "radius" in camera else None
    fov = np.full(n, camera["fov"]) if camera and "fov" in camera else None
    return PoseTable(keys, angles, radius, fov, labels=data.get("labels"))


def _eg3d_entries(data: Any) -> tuple[list[str] | None, np.ndarray]:
    if isinstance(data, np.ndarray):
        return None, data
    raw = data.get("labels") if isinstance(data, dict) and "labels" in data else data
    if raw is None:
        raise ValueError("the EG3D file's 'labels' is null: it holds no camera parameters")
    keys, values = _keyed(raw, "EG3D labels")
    missing = [k for k, v in zip(keys, values, strict=True) if v is None] if keys else []
    if missing:
        raise ValueError(f"{len(missing)} EG3D entries have no camera parameters, e.g. {missing[:3]}")
    if not _rectangular(values):
        raise ValueError("EG3D labels must all be lists of 25 numbers (4×4 cam2world + 3×3 intrinsics)")
    return keys, np.asarray(values, dtype=np.float64)


def _matrix_entries(data: Any, blender: bool) -> tuple[list[str] | None, np.ndarray, float | None]:
    if isinstance(data, np.ndarray):
        return None, data, None
    if isinstance(data, dict) and "frames" in data:
        if not blender:
            raise ValueError("a transforms.json ('frames') holds Blender/NeRF matrices: use --format blender")
        frames = data["frames"]
        if not isinstance(frames, list) or not all(isinstance(f, dict) and "file_path" in f
                                                   and "transform_matrix" in f for f in frames):
            raise ValueError("transforms.json 'frames' must be a list of {'file_path', 'transform_matrix'}")
        fov_x = data.get("camera_angle_x")
        keys = [str(f["file_path"]) for f in frames]
        values = [f["transform_matrix"] for f in frames]
        return keys, _matrices(values), None if fov_x is None else math.degrees(float(fov_x))
    keys, values = _keyed(data, "camera matrices")
    return keys, _matrices(values), None


def _keyed(raw: Any, what: str) -> tuple[list[str] | None, list[Any]]:
    """{path → value}, [[path, value], …] or an ordered [value, …] → (keys or None, values)."""
    if isinstance(raw, dict):
        return [str(k) for k in raw], list(raw.values())
    if isinstance(raw, list):
        if raw and all(isinstance(e, list) and len(e) == 2 and isinstance(e[0], str) for e in raw):
            return [e[0] for e in raw], [e[1] for e in raw]
        return None, raw
    raise ValueError(f"{what} must be a mapping {{path: value}}, a list of [path, value] pairs or an ordered list")


def _rectangular(values: list[Any]) -> bool:
    try:
        np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return True


def _matrices(values: list[Any]) -> np.ndarray:
    if not _rectangular(values):
        raise ValueError("camera matrices must all be 4×4 (or 3×4) arrays of numbers")
    return np.asarray(values, dtype=np.float64)
