"""Cameras: EpiGRAF's camera convention and everything built on it (docs/method.md §2.1, §2.2, §7.2, §13).

    angles       the ``Cameras`` batch; angles → look-at-origin cam2world; pose conditioning; camera distributions
    conventions  our convention in float64 numpy: checks of angles and matrices, yaw centring, angles ↔ cam2world
    formats      other tools' poses ↔ ours: camera axes (OpenGL/OpenCV), world axes, intrinsics, EG3D, Blender
    paths        camera paths for videos and multi-view grids
    rays         ray grids for full images and patches — the single home of the pixel convention

This package re-exports the names of ``angles``, the ones the rest of the code uses most; the other modules
are imported by name (``from epigraf.cameras.paths import orbit``).
"""

from epigraf.cameras.angles import (
    CAMERA_DISTRIBUTIONS,
    PITCH_EPS,
    PITCH_TOLERANCE,
    Cameras,
    cam2world_matrices,
    camera_origins,
    checked_angles,
    conditioning_angles,
    sample_normal,
    sample_spherical_uniform,
)

__all__ = [
    "CAMERA_DISTRIBUTIONS",
    "PITCH_EPS",
    "PITCH_TOLERANCE",
    "Cameras",
    "cam2world_matrices",
    "camera_origins",
    "checked_angles",
    "conditioning_angles",
    "sample_normal",
    "sample_spherical_uniform",
]
