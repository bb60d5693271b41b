"""Camera-pose formats ↔ EpiGRAF's convention (docs/method.md §2.1, §13): angles, cam2world matrices, EG3D, Blender.

Our convention (see ``epigraf.cameras``): angles (yaw θ, pitch φ, roll) in radians, the camera at
radius·(sin φ cos θ, cos φ, sin φ sin θ) looking at the world origin with +y up, OpenGL camera axes
(camera +x = image right, +y = image up, looks along −z). The frontal camera (θ, φ) = (0, π/2) sits on
+x, its image right is world −z.

Other tools differ in two independent ways, and every conversion here names both:

* **camera axes** — OpenGL (x right, y up, looking along −z; Blender, NeRF) or OpenCV (x right, y down,
  looking along +z; EG3D, COLMAP). A cam2world matrix changes between them by negating its y and z
  columns.
* **world axes** — which world direction is up and where the frontal camera sits. ``WORLDS`` maps a
  source world into ours with a rotation; a ``center`` (a point in the source world, e.g. the point the
  cameras look at) becomes our origin. Any 3×3 rotation may be passed instead of a name.

Arrays: every function takes array-likes and returns numpy float64 arrays with a leading batch
dimension N (a single 4×4 matrix or 25-vector is promoted to N = 1). Float64 throughout keeps round
trips exact to ~1e-12; the torch look-at of ``epigraf.cameras`` is evaluated in float64 so that the
matrices here are exactly the ones the generator renders with.

Roll: the generator ignores roll, so ``angles_to_cam2world`` builds level (roll-free) cameras exactly as
the generator does; ``cam2world_to_angles`` measures the roll of a matrix (stored as the third angle,
for information) and warns when it is not zero.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from numpy.typing import ArrayLike

from epigraf.cameras.angles import cam2world_matrices

__all__ = [
    "CAMERA_AXES",
    "WORLDS",
    "CameraPoseWarning",
    "PoseConversion",
    "YawCentring",
    "angle_errors",
    "angles_to_blender",
    "angles_to_cam2world",
    "angles_to_eg3d",
    "angles_to_matrices",
    "blender_to_angles",
    "cam2world_to_angles",
    "circular_mean",
    "eg3d_to_angles",
    "estimate_look_at",
    "fov_from_intrinsics",
    "from_epigraf_world",
    "intrinsics_from_fov",
    "matrices_to_angles",
    "opencv_to_opengl",
    "opengl_to_opencv",
    "radius_from_cam2world",
    "to_epigraf_world",
    "validate_cam2world",
    "wrap_angle",
    "yaw_centring_warning",
    "zero_centre_yaw",
]


class CameraPoseWarning(UserWarning):
    """A pose EpiGRAF can use but probably not as intended (not look-at-origin, roll, off-centre yaw)."""


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
_ROTATION_TOLERANCE = 1e-4
# |angle| above 2π cannot be radians in any convention we accept, but is typical of degrees.
_DEGREES_THRESHOLD = 2 * math.pi + 1e-3
_YAW_RANGE_TOLERANCE = 1e-6
# Below this mean resultant length yaw covers the circle (turntables, full spheres): no centre exists.
_MIN_YAW_CONCENTRATION = 0.3


@dataclass
class PoseConversion:
    """Result of converting cam2world matrices to our angles, with per-pose diagnostics.

    angles: [N, 3] (yaw, pitch, roll) radians, yaw ∈ (−π, π]; radius: [N] distance from the origin;
    off_axis_deg: [N] angle between the optical axis and the direction to the origin; roll_deg: [N]
    rotation about the optical axis relative to a level camera; fov: [N] degrees when known;
    issues: human-readable warnings (non-look-at poses, roll, off-centre principal points).
    """

    angles: np.ndarray
    radius: np.ndarray
    off_axis_deg: np.ndarray
    roll_deg: np.ndarray
    fov: np.ndarray | None = None
    issues: list[str] = field(default_factory=list)


@dataclass
class YawCentring:
    """What ``zero_centre_yaw`` did: yaw' = wrap(yaw − shift). ``concentration`` ∈ [0, 1] is the mean
    resultant length of yaw (1 = all equal, ≈0 = spread around the circle); ``applied`` is False when
    yaw has no meaningful centre and was left unchanged."""

    shift: float
    concentration: float
    applied: bool

    def __str__(self) -> str:
        if not self.applied:
            return (f"yaw left unchanged: it covers the full circle (concentration {self.concentration:.2f}), "
                    "so it has no centre")
        return (f"yaw shifted by {-self.shift:+.4f} rad ({math.degrees(-self.shift):+.2f}°) so that its circular "
                f"mean is 0 (concentration {self.concentration:.2f})")


def _float_array(x: ArrayLike, what: str) -> np.ndarray:
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} must be numbers: {err}") from None
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} contain NaN or Inf")
    return arr


def _broadcast(value: ArrayLike, n: int, what: str) -> np.ndarray:
    arr = _float_array(value, what)
    if arr.ndim > 1 or (arr.ndim == 1 and arr.shape[0] not in (1, n)):
        raise ValueError(f"{what} must be a scalar or [{n}], got shape {list(arr.shape)}")
    return np.broadcast_to(arr.reshape(-1), (n,)).copy()


def wrap_angle(angle: ArrayLike) -> np.ndarray:
    """Angles wrapped into [−π, π)."""
    a = np.asarray(angle, dtype=np.float64)
    return (a + math.pi) % (2 * math.pi) - math.pi


# ------------------------------------------------------------------------------------------------------
# Validation of angles and matrices
# ------------------------------------------------------------------------------------------------------

def _examples(mask: np.ndarray, values: np.ndarray, names: list[str] | None, limit: int = 3) -> str:
    idx = np.flatnonzero(mask)[:limit]
    label = (lambda i: repr(names[i])) if names is not None else (lambda i: f"#{i}")
    more = ", …" if mask.sum() > limit else ""
    return ", ".join(f"{label(i)}: {values[i]:.4g}" for i in idx) + more


def angle_errors(angles: ArrayLike, names: list[str] | None = None) -> list[str]:
    """Every problem that makes camera angles [N, 3] unusable, as messages (empty list = fine).

    Degrees are reported alone (the range checks would only repeat them); otherwise pitch outside
    (0, π) and yaw outside [−π, π] are reported separately. ``names`` label the examples.
    """
    arr = np.asarray(angles, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 3:
        return [f"camera angles must be [N, 3] (yaw, pitch, roll), got shape {list(arr.shape)}"]
    if not np.isfinite(arr).all():
        bad = ~np.isfinite(arr).all(axis=1)
        return [f"{int(bad.sum())} camera poses contain NaN or Inf ({_examples(bad, arr[:, 0], names)})"]
    largest = np.abs(arr[:, :2]).max(initial=0.0)
    if largest > _DEGREES_THRESHOLD:
        return [f"camera angles look like degrees: the largest |yaw| or |pitch| is {largest:.4g}, above 2π; "
                "EpiGRAF angles are radians (convert with numpy.radians)"]
    errors = []
    yaw, pitch = arr[:, 0], arr[:, 1]
    bad_pitch = (pitch <= 0) | (pitch >= math.pi)
    if bad_pitch.any():
        errors.append(
            f"{int(bad_pitch.sum())} of {len(arr)} poses have pitch outside (0, π) "
            f"({_examples(bad_pitch, pitch, names)}); pitch is the polar angle from +y with π/2 at the "
            "horizon — an elevation measured from the horizon converts as π/2 − elevation"
        )
    bad_yaw = np.abs(yaw) > math.pi + _YAW_RANGE_TOLERANCE
    if bad_yaw.any():
        errors.append(
            f"{int(bad_yaw.sum())} of {len(arr)} poses have yaw outside [−π, π] ({_examples(bad_yaw, yaw, names)}); "
            "wrap it into [−π, π] and centre it (epigraf dataset convert --zero-centre-yaw)"
        )
    return errors


def circular_mean(yaw: ArrayLike) -> tuple[float, float]:
    """(circular mean ∈ [−π, π], mean resultant length ∈ [0, 1]) of angles [N]."""
    a = np.asarray(yaw, dtype=np.float64)
    s, c = float(np.sin(a).mean()), float(np.cos(a).mean())
    return math.atan2(s, c), math.hypot(s, c)


def yaw_centring_warning(angles: ArrayLike, tolerance: float = 0.1) -> str | None:
    """A warning when yaw [N, 3] is concentrated around a centre farther than ``tolerance`` rad from 0."""
    mean, concentration = circular_mean(np.asarray(angles, dtype=np.float64)[:, 0])
    if concentration < _MIN_YAW_CONCENTRATION or abs(mean) <= tolerance:
        return None
    return (f"yaw is not zero-centred: its circular mean is {mean:.4f} rad ({math.degrees(mean):.2f}°); "
            "yaw 0 must be the mean (frontal) view for mirroring and GPC — re-centre it "
            "(epigraf dataset convert --zero-centre-yaw)")


def zero_centre_yaw(angles: ArrayLike, min_concentration: float = _MIN_YAW_CONCENTRATION, *, warn: bool = True
                    ) -> tuple[np.ndarray, YawCentring]:
    """Shift yaw [N, 3] by its circular mean so that it is zero-centred, wrapped into [−π, π).

    Shifting yaw is a rotation of the world about +y, so it changes nothing but the frame. When yaw
    covers the full circle (mean resultant length < ``min_concentration``) it has no centre; the angles are
    returned unchanged (``applied`` False) with a ``CameraPoseWarning`` when ``warn``.
    """
    arr = _float_array(angles, "camera angles").copy()
    mean, concentration = circular_mean(arr[:, 0])
    if concentration < min_concentration:
        report = YawCentring(shift=0.0, concentration=concentration, applied=False)
        if warn:
            warnings.warn(str(report), CameraPoseWarning, stacklevel=2)
        return arr, report
    arr[:, 0] = wrap_angle(arr[:, 0] - mean)
    return arr, YawCentring(shift=mean, concentration=concentration, applied=True)


def _as_matrices(cam2world: ArrayLike) -> np.ndarray:
    """[4, 4], [3, 4], [N, 4, 4] or [N, 3, 4] → [N, 4, 4]; anything else is an error."""
    m = _float_array(cam2world, "camera matrices")
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3 or m.shape[1:] not in ((4, 4), (3, 4)):
        raise ValueError(f"camera matrices must be [N, 4, 4] (or [N, 3, 4]) cam2world, got shape {list(m.shape)}")
    if m.shape[1] == 3:
        bottom = np.broadcast_to(np.array([0.0, 0.0, 0.0, 1.0]), (m.shape[0], 1, 4))
        m = np.concatenate([m, bottom], axis=1)
    return m


def validate_cam2world(cam2world: ArrayLike) -> np.ndarray:
    """Check camera-to-world matrices and return them as [N, 4, 4] float64.

    Errors (ValueError): wrong shape, a bottom row other than (0, 0, 0, 1), a rotation block that is
    not orthonormal (scaled or sheared: max |RᵀR − I| > 1e-4), det = −1 (a reflection, i.e. a
    left-handed axis convention), a camera at the origin.
    """
    m = _as_matrices(cam2world)
    n = m.shape[0]
    bottom_bad = np.abs(m[:, 3] - np.array([0.0, 0.0, 0.0, 1.0])).max(axis=1) > _ROTATION_TOLERANCE
    if bottom_bad.any():
        raise ValueError(f"{int(bottom_bad.sum())} of {n} camera matrices have a bottom row other than "
                         f"(0, 0, 0, 1), e.g. #{int(np.flatnonzero(bottom_bad)[0])}: not a rigid cam2world")
    rot = m[:, :3, :3]
    deviation = np.abs(rot.transpose(0, 2, 1) @ rot - np.eye(3)).max(axis=(1, 2))
    if (deviation > _ROTATION_TOLERANCE).any():
        i = int(deviation.argmax())
        raise ValueError(f"{int((deviation > _ROTATION_TOLERANCE).sum())} of {n} camera rotations are not "
                         f"orthonormal (e.g. #{i}: max |RᵀR − I| = {deviation[i]:.3g}); remove scale/shear from "
                         "the camera transform")
    det = np.linalg.det(rot)
    if (det < 0).any():
        raise ValueError(f"{int((det < 0).sum())} of {n} camera rotations have det −1 (e.g. "
                         f"#{int(np.flatnonzero(det < 0)[0])}): a reflection, not a rotation — a left-handed axis "
                         "convention or a single flipped axis")
    if (np.linalg.norm(m[:, :3, 3], axis=1) < 1e-9).any():
        raise ValueError("a camera sits at the world origin; EpiGRAF cameras look at the origin from a distance")
    return m


# ------------------------------------------------------------------------------------------------------
# Our angles ↔ our cam2world (OpenGL axes, our world)
# ------------------------------------------------------------------------------------------------------

def angles_to_cam2world(angles: ArrayLike, radius: ArrayLike = 1.0) -> np.ndarray:
    """angles [N, 3] radians, radius scalar or [N] → [N, 4, 4] cam2world, OpenGL axes, our world.

    Exactly the generator's look-at camera (``epigraf.cameras.cam2world_matrices``) in float64; roll is
    ignored as by the generator. Degrees, pitch outside (0, π) or yaw outside [−π, π] are errors.
    """
    arr = _float_array(angles, "camera angles")
    if arr.ndim == 1:
        arr = arr[None]
    errors = angle_errors(arr)
    if errors:
        raise ValueError("; ".join(errors))
    r = _broadcast(radius, arr.shape[0], "camera radius")
    if (r <= 0).any():
        raise ValueError(f"camera radius must be positive, got {r[r <= 0][:3].tolist()}")
    return cam2world_matrices(torch.from_numpy(arr), torch.from_numpy(r)).numpy()


def cam2world_to_angles(
    cam2world: ArrayLike,
    *,
    look_at_tolerance_deg: float = 1.0,
    roll_tolerance_deg: float = 1.0,
    warn: bool = True,
) -> PoseConversion:
    """[N, 4, 4] cam2world (OpenGL axes, our world) → angles and radius, with diagnostics.

    Yaw and pitch come from the camera *position* (that is where the generator puts its camera);
    radius = |translation|. Poses whose optical axis misses the origin by more than
    ``look_at_tolerance_deg``, or with |roll| above ``roll_tolerance_deg``, are listed in ``issues`` and,
    with ``warn``, reported as a ``CameraPoseWarning``: the generator would render them as level
    look-at-origin cameras, i.e. not what the image shows. The measured roll is stored as the third angle.
    """
    m = validate_cam2world(cam2world)
    t = m[:, :3, 3]
    radius = np.linalg.norm(t, axis=1)
    yaw = np.arctan2(t[:, 2], t[:, 0])
    pitch = np.arccos(np.clip(t[:, 1] / radius, -1.0, 1.0))
    forward = -m[:, :3, 2]
    to_origin = -t / radius[:, None]
    off_axis = np.degrees(np.arctan2(np.linalg.norm(np.cross(forward, to_origin), axis=1),
                                     (forward * to_origin).sum(axis=1)))
    roll = _roll(m[:, :3, :3])
    angles = np.stack([yaw, pitch, roll], axis=1)
    result = PoseConversion(angles=angles, radius=radius, off_axis_deg=off_axis, roll_deg=np.degrees(roll))
    result.issues = _pose_issues(result, look_at_tolerance_deg, roll_tolerance_deg)
    if warn:
        for issue in result.issues:
            warnings.warn(issue, CameraPoseWarning, stacklevel=2)
    return result


def _roll(rot: np.ndarray) -> np.ndarray:
    """Rotation [N] (radians) of the image-right axis about the optical axis, relative to the level
    camera with the same optical axis; positive = camera turned counter-clockwise as seen from behind."""
    forward = -rot[:, :, 2]
    up = np.array([0.0, 1.0, 0.0])
    left = np.cross(up, forward)
    left /= np.maximum(np.linalg.norm(left, axis=1, keepdims=True), 1e-12)
    level_up = np.cross(forward, left)
    right = rot[:, :, 0]
    return np.arctan2((right * level_up).sum(axis=1), -(right * left).sum(axis=1))


def _pose_issues(conv: PoseConversion, look_at_tolerance_deg: float, roll_tolerance_deg: float) -> list[str]:
    issues = []
    n = len(conv.radius)
    off = conv.off_axis_deg > look_at_tolerance_deg
    if off.any():
        issues.append(
            f"{int(off.sum())} of {n} cameras do not look at the origin (optical axis up to "
            f"{conv.off_axis_deg.max():.2f}° away from it, tolerance {look_at_tolerance_deg}°; e.g. "
            f"{_examples(off, conv.off_axis_deg, None)}); EpiGRAF renders look-at-origin cameras — pass the "
            "point they look at as `center` (see estimate_look_at)"
        )
    rolled = np.abs(conv.roll_deg) > roll_tolerance_deg
    if rolled.any():
        issues.append(
            f"{int(rolled.sum())} of {n} cameras have roll (up to {np.abs(conv.roll_deg).max():.2f}°, tolerance "
            f"{roll_tolerance_deg}°); EpiGRAF ignores roll, so those images should be rotated upright"
        )
    return issues


def radius_from_cam2world(cam2world: ArrayLike) -> np.ndarray:
    """[N, 4, 4] → [N] camera distance from the world origin (translation norm)."""
    return np.linalg.norm(_as_matrices(cam2world)[:, :3, 3], axis=1)


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
