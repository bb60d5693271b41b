"""Other tools' camera poses ↔ EpiGRAF's convention (docs/method.md §2.1, §13): camera axes, world axes, EG3D, Blender.

Our convention is described in ``epigraf.cameras.conventions``. Other tools differ from it in two independent
ways, and every conversion here names both:

* **camera axes** — OpenGL (x right, y up, looking along −z; Blender, NeRF) or OpenCV (x right, y down,
  looking along +z; EG3D, COLMAP). A cam2world matrix changes between them by negating its y and z
  columns.
* **world axes** — which world direction is up and where the frontal camera sits. ``WORLDS`` maps a
  source world into ours with a rotation; a ``center`` (a point in the source world, e.g. the point the
  cameras look at) becomes our origin. Any 3×3 rotation may be passed instead of a name.

Arrays as in ``epigraf.cameras.conventions``: array-likes in, numpy float64 out, leading batch dimension N.
"""

from __future__ import annotations

import warnings

import numpy as np
from numpy.typing import ArrayLike

from epigraf.cameras.conventions import (
    _ROTATION_TOLERANCE,
    CameraPoseWarning,
    PoseConversion,
    _as_matrices,
    _broadcast,
    _float_array,
    angles_to_cam2world,
    cam2world_to_angles,
    validate_cam2world,
)

__all__ = [
    "CAMERA_AXES",
    "WORLDS",
    "angles_to_blender",
    "angles_to_eg3d",
    "angles_to_matrices",
    "blender_to_angles",
    "eg3d_to_angles",
    "estimate_look_at",
    "fov_from_intrinsics",
    "from_epigraf_world",
    "intrinsics_from_fov",
    "matrices_to_angles",
    "opencv_to_opengl",
    "opengl_to_opencv",
    "to_epigraf_world",
]


def _frozen(rows: list[list[float]]) -> np.ndarray:
    out = np.array(rows, dtype=np.float64)
    out.flags.writeable = False  # shared module constants
    return out


# Source world → EpiGRAF world. Ours: +y up, frontal camera on +x, frontal image right = −z.
WORLDS: dict[str, np.ndarray] = {
    "epigraf": _frozen(np.eye(3).tolist()),
    # EG3D: +y up, the canonical (frontal) camera on +z looking at the origin, its image right = +x.
    # A rotation of +90° about y takes EG3D's +z to our +x and its +x to our −z.
    "eg3d": _frozen([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]]),
    # Blender: +z up; its "Front" view looks along +y from −y with +x to the right. We make that view our
    # frontal camera: Blender −y → our +x, +x → our −z, +z → our +y.
    "blender": _frozen([[0.0, -1.0, 0.0], [0.0, 0.0, 1.0], [-1.0, 0.0, 0.0]]),
    # Blender's glTF (+Y up) export axes: (x, y, z) → (x, z, −y). Blender's front view then has yaw π/2.
    "blender-gltf": _frozen([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]]),
}
CAMERA_AXES = ("opengl", "opencv")

_GL_CV_FLIP = np.diag([1.0, -1.0, -1.0, 1.0])


# ------------------------------------------------------------------------------------------------------
# Camera axes and world axes
# ------------------------------------------------------------------------------------------------------

def _check_axes(axes: str) -> None:
    if axes not in CAMERA_AXES:
        raise ValueError(f"camera axes must be one of {CAMERA_AXES}, got {axes!r}")


def opengl_to_opencv(cam2world: ArrayLike) -> np.ndarray:
    """cam2world [N, 4, 4] with OpenGL camera axes → OpenCV axes (negate the camera y and z columns)."""
    return _as_matrices(cam2world) @ _GL_CV_FLIP


def opencv_to_opengl(cam2world: ArrayLike) -> np.ndarray:
    """cam2world [N, 4, 4] with OpenCV camera axes → OpenGL axes (the same flip: it is its own inverse)."""
    return _as_matrices(cam2world) @ _GL_CV_FLIP


def _world_rotation(world: str | ArrayLike) -> np.ndarray:
    if isinstance(world, str):
        if world not in WORLDS:
            raise ValueError(f"unknown world axes {world!r}; choose from {sorted(WORLDS)} or pass a 3×3 rotation")
        return WORLDS[world]
    rot = _float_array(world, "world rotation")
    if rot.shape != (3, 3) or np.abs(rot.T @ rot - np.eye(3)).max() > _ROTATION_TOLERANCE or np.linalg.det(rot) < 0:
        raise ValueError("a world rotation must be a 3×3 rotation matrix (orthonormal, det +1)")
    return rot


def _world_transform(world: str | ArrayLike, center: ArrayLike | None) -> np.ndarray:
    """4×4 map of source-world points into ours: p ↦ W (p − center)."""
    rot = _world_rotation(world)
    c = np.zeros(3) if center is None else _float_array(center, "center").reshape(3)
    out = np.eye(4)
    out[:3, :3] = rot
    out[:3, 3] = -rot @ c
    return out


def to_epigraf_world(cam2world: ArrayLike, world: str | ArrayLike = "epigraf",
                     center: ArrayLike | None = None) -> np.ndarray:
    """cam2world [N, 4, 4] in a source world → our world (camera axes unchanged).

    ``world``: a name in ``WORLDS`` or a 3×3 rotation (source → ours); ``center``: the source-world
    point [3] that becomes our origin (default: the source origin).
    """
    return _world_transform(world, center) @ _as_matrices(cam2world)


def from_epigraf_world(cam2world: ArrayLike, world: str | ArrayLike = "epigraf",
                       center: ArrayLike | None = None) -> np.ndarray:
    """Inverse of ``to_epigraf_world``: cam2world [N, 4, 4] in our world → the source world."""
    return np.linalg.inv(_world_transform(world, center)) @ _as_matrices(cam2world)


def matrices_to_angles(
    cam2world: ArrayLike,
    *,
    axes: str = "opengl",
    world: str | ArrayLike = "epigraf",
    center: ArrayLike | None = None,
    look_at_tolerance_deg: float = 1.0,
    roll_tolerance_deg: float = 1.0,
    warn: bool = True,
) -> PoseConversion:
    """cam2world [N, 4, 4] with the given camera ``axes`` and ``world`` → our angles (``cam2world_to_angles``)."""
    _check_axes(axes)
    m = validate_cam2world(cam2world)
    if axes == "opencv":
        m = opencv_to_opengl(m)
    return cam2world_to_angles(to_epigraf_world(m, world, center), look_at_tolerance_deg=look_at_tolerance_deg,
                               roll_tolerance_deg=roll_tolerance_deg, warn=warn)


def angles_to_matrices(
    angles: ArrayLike,
    radius: ArrayLike = 1.0,
    *,
    axes: str = "opengl",
    world: str | ArrayLike = "epigraf",
    center: ArrayLike | None = None,
) -> np.ndarray:
    """Our angles [N, 3] and radius → cam2world [N, 4, 4] with the given camera ``axes`` and ``world``."""
    _check_axes(axes)
    m = from_epigraf_world(angles_to_cam2world(angles, radius), world, center)
    return opengl_to_opencv(m) if axes == "opencv" else m


def estimate_look_at(cam2world: ArrayLike, axes: str = "opengl") -> tuple[np.ndarray, float]:
    """The point [3] closest (least squares) to all optical axes, and the RMS distance of the axes from it.

    A small RMS means the cameras share a look-at point; pass it as ``center`` to re-centre the poses.
    With a single camera (or parallel axes) the problem is degenerate and the minimum-norm point is used.
    """
    m = _as_matrices(cam2world)
    forward = _optical_axis(m, axes)
    t = m[:, :3, 3]
    proj = np.eye(3) - forward[:, :, None] * forward[:, None, :]
    point = np.linalg.lstsq(proj.sum(axis=0), (proj @ t[:, :, None]).sum(axis=0)[:, 0], rcond=None)[0]
    residual = (proj @ (point - t)[:, :, None])[:, :, 0]
    return point, float(np.sqrt((residual ** 2).sum(axis=1).mean()))


def _optical_axis(m: np.ndarray, axes: str) -> np.ndarray:
    _check_axes(axes)
    return -m[:, :3, 2] if axes == "opengl" else m[:, :3, 2]


# ------------------------------------------------------------------------------------------------------
# Intrinsics, EG3D and Blender
# ------------------------------------------------------------------------------------------------------

def fov_from_intrinsics(intrinsics: ArrayLike, *, warn: bool = True) -> np.ndarray:
    """Normalised intrinsics [N, 3, 3] (focal and principal point divided by the image size) → fov [N] deg.

    fov = 2·atan(1 / (2 f)). We identify our camera-plane coordinate x ∈ [−1, 1] (border pixel centres)
    with the normalised image coordinate u = (x + 1)/2 ∈ [0, 1], so a round trip with
    ``intrinsics_from_fov`` is exact. Errors: un-normalised values, skew, fx ≠ fy (EpiGRAF has one fov),
    a last row other than (0, 0, 1). A principal point away from (0.5, 0.5) is a ``CameraPoseWarning``.
    """
    k = _float_array(intrinsics, "intrinsics")
    if k.ndim == 2:
        k = k[None]
    if k.ndim != 3 or k.shape[1:] != (3, 3):
        raise ValueError(f"intrinsics must be [N, 3, 3], got shape {list(k.shape)}")
    fx, fy, cx, cy = k[:, 0, 0], k[:, 1, 1], k[:, 0, 2], k[:, 1, 2]
    if (np.abs(cx) > 2).any() or (np.abs(cy) > 2).any():
        raise ValueError(f"intrinsics look un-normalised (principal point {cx[0]:.4g}, {cy[0]:.4g}); divide the "
                         "first two rows by the image width and height")
    if np.abs(k[:, 2] - np.array([0.0, 0.0, 1.0])).max() > 1e-6 or (np.abs(k[:, [0, 1], [1, 0]]) > 1e-6).any():
        raise ValueError("intrinsics must be [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] (no skew)")
    if (fx <= 0).any():
        raise ValueError(f"focal lengths must be positive, got {fx[fx <= 0][:3].tolist()}")
    if (np.abs(fx - fy) > 1e-4 * fx).any():
        i = int(np.argmax(np.abs(fx - fy)))
        raise ValueError(f"fx ≠ fy (e.g. #{i}: {fx[i]:.6g} vs {fy[i]:.6g}); EpiGRAF needs square images with one fov "
                         "(crop the images and adjust the intrinsics first)")
    off_centre = np.maximum(np.abs(cx - 0.5), np.abs(cy - 0.5)) > 1e-3
    if warn and off_centre.any():
        warnings.warn(f"{int(off_centre.sum())} of {len(k)} principal points are not at the image centre (e.g. "
                      f"{cx[off_centre][0]:.4f}, {cy[off_centre][0]:.4f}); EpiGRAF's cameras are centred, so those "
                      "images are slightly shifted relative to the poses", CameraPoseWarning, stacklevel=2)
    return np.degrees(2 * np.arctan(0.5 / fx))


def intrinsics_from_fov(fov: ArrayLike) -> np.ndarray:
    """fov [N] (degrees) → normalised intrinsics [N, 3, 3] with the principal point at (0.5, 0.5)."""
    f_deg = _float_array(fov, "fov").reshape(-1)
    if ((f_deg <= 0) | (f_deg >= 180)).any():
        raise ValueError(f"fov must be in (0, 180) degrees, got {f_deg[(f_deg <= 0) | (f_deg >= 180)][:3].tolist()}")
    focal = 0.5 / np.tan(np.radians(f_deg) / 2)
    k = np.zeros((len(f_deg), 3, 3))
    k[:, 0, 0] = k[:, 1, 1] = focal
    k[:, :2, 2] = 0.5
    k[:, 2, 2] = 1.0
    return k


def eg3d_to_angles(
    labels: ArrayLike,
    *,
    world: str | ArrayLike = "eg3d",
    center: ArrayLike | None = None,
    look_at_tolerance_deg: float = 1.0,
    roll_tolerance_deg: float = 1.0,
    warn: bool = True,
) -> PoseConversion:
    """EG3D camera labels [N, 25] → our angles, radius and fov.

    A label is a row-major 4×4 cam2world in OpenCV camera axes (16 numbers) followed by the row-major
    3×3 intrinsics normalised by the image size (9 numbers). EG3D's world is +y up with the frontal
    camera on +z (``WORLDS["eg3d"]``); its FFHQ cameras sit ≈ 2.7 from the origin, so expect that radius.
    """
    arr = _float_array(labels, "EG3D labels")
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 25:
        raise ValueError("EG3D labels must be 25 numbers per image (16 for the 4×4 cam2world, 9 for the "
                         f"normalised intrinsics), got shape {list(arr.shape)}")
    fov = fov_from_intrinsics(arr[:, 16:].reshape(-1, 3, 3), warn=warn)
    result = matrices_to_angles(arr[:, :16].reshape(-1, 4, 4), axes="opencv", world=world, center=center,
                                look_at_tolerance_deg=look_at_tolerance_deg, roll_tolerance_deg=roll_tolerance_deg,
                                warn=warn)
    result.fov = fov
    return result


def angles_to_eg3d(
    angles: ArrayLike,
    radius: ArrayLike,
    fov: ArrayLike,
    *,
    world: str | ArrayLike = "eg3d",
    center: ArrayLike | None = None,
) -> np.ndarray:
    """Our angles [N, 3], radius and fov (degrees; scalars or [N]) → EG3D labels [N, 25]."""
    m = angles_to_matrices(angles, radius, axes="opencv", world=world, center=center)
    k = intrinsics_from_fov(_broadcast(fov, m.shape[0], "fov"))
    return np.concatenate([m.reshape(-1, 16), k.reshape(-1, 9)], axis=1)


def blender_to_angles(
    matrix_world: ArrayLike,
    *,
    world: str | ArrayLike = "blender",
    center: ArrayLike | None = None,
    look_at_tolerance_deg: float = 1.0,
    roll_tolerance_deg: float = 1.0,
    warn: bool = True,
) -> PoseConversion:
    """Blender camera ``matrix_world`` [N, 4, 4] (OpenGL-like camera axes, Z-up world) → our angles.

    ``world="blender"`` makes Blender's front view (camera on −y looking along +y) our frontal camera;
    ``"blender-gltf"`` uses the glTF exporter's axes instead (x, y, z) → (x, z, −y).
    """
    return matrices_to_angles(matrix_world, axes="opengl", world=world, center=center,
                              look_at_tolerance_deg=look_at_tolerance_deg, roll_tolerance_deg=roll_tolerance_deg,
                              warn=warn)


def angles_to_blender(
    angles: ArrayLike,
    radius: ArrayLike = 1.0,
    *,
    world: str | ArrayLike = "blender",
    center: ArrayLike | None = None,
) -> np.ndarray:
    """Our angles [N, 3] and radius → Blender camera ``matrix_world`` [N, 4, 4]."""
    return angles_to_matrices(angles, radius, axes="opengl", world=world, center=center)
