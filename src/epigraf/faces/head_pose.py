"""Head pose from five landmarks: a mean 3D face template fitted under scaled orthographic projection.

**Template.** ``FACE_TEMPLATE``: approximate positions, in millimetres, of the five MTCNN landmarks on an average
adult face, defined for this project from textbook proportions (not taken from any face model): pupils 62 apart;
the nose tip 35 below the pupils and 36 in front of them; mouth corners 50 apart, 66 below the pupils and 8 in
front. Axes of a head seen frontally: X to the image's right, Y up, Z towards the camera; origin between the
pupils. A head is *frontal* when its template axes are the camera's axes; the template fixes what "pitch 0"
means, so absolute pitch is uncertain by several degrees (a nose tip 5 mm higher tilts it by about 8°).

**Solver.** The landmarks u [5, 2] (pixels, y down) are modelled as u = s · P R X(δ) + t with R the head's
rotation (head axes → camera axes), P = [[1, 0, 0], [0, −1, 0]] the orthographic projection flipping y, s a
scale, t [2] a translation, and X(δ) the template with its mouth corners raised by δ mm: one expression
parameter, because a smile lifts the corners by a centimetre or more, which a rigid template would read as
the camera looking down on the face (the astronaut test photo: 30° of pitch rigidly, level with δ). The 11
residuals are the 10 landmark errors divided by 3 % of the eye distance (MTCNN's typical error) and δ / 6 mm
(its prior); they are minimised by Levenberg–Marquardt (``scipy.optimize.least_squares``, method "lm") over the
rotation vector of R, log s, t and δ, started from three yaws (−45°, 0, 45°) with scale and translation from the
eyes; the lowest cost wins. Weak perspective ignores the photo's unknown focal length, a good model for
portraits whose head is far from the camera relative to its depth (the FFHQ presets' 12° camera is nearly so).

**Camera angles.** Our FFHQ world (docs/cameras.md) keeps the head fixed, face towards +x, up +y, and moves
the camera: head axes (X, Y, Z) = world (−z, y, x). A camera that sees the head rotated by R has
cam2world rotation C = A Rᵀ with A the head → world map, so its yaw, pitch (from +y) and roll follow from C as
for any cam2world matrix (``cameras.conventions.cam2world_to_angles``). Positive yaw: the nose points to the
image's right (the subject turned to their left); pitch below π/2: the camera looks down on the face; the
mirror image has the negated yaw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares
from scipy.spatial.transform import Rotation

from epigraf.cameras.conventions import cam2world_to_angles

# Rows: left eye, right eye, nose tip, left mouth corner, right mouth corner (as seen in a frontal image), mm.
FACE_TEMPLATE = np.array([
    [-31.0, 0.0, 0.0],
    [31.0, 0.0, 0.0],
    [0.0, -35.0, 36.0],
    [-25.0, -66.0, 8.0],
    [25.0, -66.0, 8.0],
])
# Head axes (X right, Y up, Z towards the frontal camera) → our world: columns are the images of X, Y, Z.
HEAD_TO_WORLD = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
_FLIP_Y = np.array([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
_START_YAWS = (-math.pi / 4, 0.0, math.pi / 4)
# Landmark error (share of the eye distance) and prior of the mouth corners' height (mm), the residuals' units.
LANDMARK_SIGMA = 0.03
MOUTH_SIGMA_MM = 6.0


@dataclass
class HeadPose:
    """The fit: rotation [3, 3] (head axes → camera axes), scale (pixels per mm), translation [2] (pixels),
    mouth_shift (mm the mouth corners are raised), rms landmark error in pixels, and ``angles`` [3]: the
    camera's (yaw, pitch, roll) in radians, our convention."""

    rotation: np.ndarray
    scale: float
    translation: np.ndarray
    mouth_shift: float
    rms: float
    angles: np.ndarray


def project(rotation: np.ndarray, scale: float, translation: np.ndarray,
            template: np.ndarray = FACE_TEMPLATE) -> np.ndarray:
    """Template [N, 3] → image points [N, 2] (pixels, y down) under s · P R X + t."""
    return scale * (template @ rotation.T) @ _FLIP_Y.T + translation


def rotation_from_camera_angles(angles: np.ndarray) -> np.ndarray:
    """Our camera's (yaw, pitch, roll) [3] → the head rotation [3, 3] it sees (the inverse of ``camera_angles``)."""
    yaw, pitch, roll = (float(a) for a in angles)
    back = np.array([math.sin(pitch) * math.cos(yaw), math.cos(pitch), math.sin(pitch) * math.sin(yaw)])
    left = np.cross([0.0, 1.0, 0.0], -back)
    left /= np.linalg.norm(left)
    up = np.cross(-back, left)
    # Roll turns the image's right axis towards its up axis (cam2world_to_angles' sign).
    right = -left * math.cos(roll) + up * math.sin(roll)
    up = np.cross(back, right)
    cam2world = np.stack([right, up, back], axis=1)
    return cam2world.T @ HEAD_TO_WORLD


def camera_angles(rotation: np.ndarray) -> np.ndarray:
    """Head rotation [3, 3] (head → camera axes) → our camera's (yaw, pitch, roll) [3], radians."""
    cam2world = np.eye(4)
    cam2world[:3, :3] = HEAD_TO_WORLD @ rotation.T
    cam2world[:3, 3] = cam2world[:3, 2]  # on the unit sphere, looking at the head
    return cam2world_to_angles(cam2world[None], warn=False).angles[0]


def shifted_template(mouth_shift: float, template: np.ndarray = FACE_TEMPLATE) -> np.ndarray:
    """The template [5, 3] with its mouth corners (rows 3, 4) raised by ``mouth_shift`` mm."""
    out = template.copy()
    out[3:, 1] += mouth_shift
    return out


def estimate_pose(landmarks: np.ndarray, template: np.ndarray = FACE_TEMPLATE) -> HeadPose:
    """Five landmarks [5, 2] (pixels, y down; left eye, right eye, nose, left and right mouth corner as seen in
    the image) → the head pose (see the module docstring for the model and solver)."""
    u = np.asarray(landmarks, dtype=np.float64)
    if u.shape != (5, 2) or not np.isfinite(u).all():
        raise ValueError(f"expected five finite landmarks [5, 2], got {u.shape}")
    unit = float(np.linalg.norm(u[1] - u[0]))
    if unit <= 0:
        raise ValueError("the two eyes are at the same point")

    def landmark_errors(params: np.ndarray) -> np.ndarray:
        rotation = Rotation.from_rotvec(params[:3]).as_matrix()
        return project(rotation, math.exp(params[3]), params[4:6], shifted_template(params[6], template)) - u

    def residuals(params: np.ndarray) -> np.ndarray:
        return np.append(landmark_errors(params).ravel() / (LANDMARK_SIGMA * unit), params[6] / MOUTH_SIGMA_MM)

    scale = unit / float(np.linalg.norm(template[1] - template[0]))
    best = None
    for yaw in _START_YAWS:
        start_rotation = Rotation.from_rotvec([0.0, yaw, 0.0])
        start_t = u.mean(axis=0) - project(start_rotation.as_matrix(), scale, np.zeros(2), template).mean(axis=0)
        x0 = np.concatenate([start_rotation.as_rotvec(), [math.log(scale)], start_t, [0.0]])
        fit = least_squares(residuals, x0, method="lm")
        if best is None or fit.cost < best.cost:
            best = fit
    rotation = Rotation.from_rotvec(best.x[:3]).as_matrix()
    rms = float(np.sqrt((landmark_errors(best.x) ** 2).sum(axis=1).mean()))
    return HeadPose(rotation=rotation, scale=math.exp(best.x[3]), translation=best.x[4:6],
                    mouth_shift=float(best.x[6]), rms=rms, angles=camera_angles(rotation))
