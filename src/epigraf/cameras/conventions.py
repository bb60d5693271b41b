"""EpiGRAF's camera convention in float64 numpy (docs/method.md §2.1, §13): checks, yaw centring, angles ↔ cam2world.

Our convention (see ``epigraf.cameras.angles``): angles (yaw θ, pitch φ, roll) in radians, the camera at
radius·(sin φ cos θ, cos φ, sin φ sin θ) looking at the world origin with +y up, OpenGL camera axes
(camera +x = image right, +y = image up, looks along −z). The frontal camera (θ, φ) = (0, π/2) sits on
+x, its image right is world −z. Other tools' camera axes, world axes and files (EG3D, Blender) are
converted to and from this convention in ``epigraf.cameras.formats``.

Arrays: every function takes array-likes and returns numpy float64 arrays with a leading batch
dimension N (a single 4×4 matrix or 25-vector is promoted to N = 1). Float64 throughout keeps round
trips exact to ~1e-12; the torch look-at of ``epigraf.cameras.angles`` is evaluated in float64 so that the
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
    "CameraPoseWarning",
    "PoseConversion",
    "YawCentring",
    "angle_errors",
    "angles_to_cam2world",
    "cam2world_to_angles",
    "circular_mean",
    "radius_from_cam2world",
    "validate_cam2world",
    "wrap_angle",
    "yaw_centring_warning",
    "zero_centre_yaw",
]


class CameraPoseWarning(UserWarning):
    """A pose EpiGRAF can use but probably not as intended (not look-at-origin, roll, off-centre yaw)."""


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
