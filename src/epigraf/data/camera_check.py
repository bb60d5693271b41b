"""Does a camera configuration fit a dataset? The frustum-in-cube check (docs/method.md §11 property 7) and the
agreement of the configured fov with the one stored by ``epigraf dataset convert``.

Every point the renderer samples lies on a ray between ``ray_start`` and ``ray_end``; the tri-plane
cube [−cube_scale, cube_scale]³ must contain them all, or features are sampled outside the planes.
The check follows docs/method.md §11.7: the four corner rays of the image (the border pixel centres, camera-plane
coordinates (±1, ±1), from ``epigraf.cameras.rays``) at distances near and far, max |p|∞ over the poses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from epigraf.cameras import PITCH_EPS, Cameras
from epigraf.cameras.rays import pixel_grid, points_along_rays, world_rays
from epigraf.config import CameraConfig

# Stored and configured fov closer than this (relative) are the same camera for practical purposes.
_FOV_RELATIVE_TOLERANCE = 0.02
# A frustum filling less of the cube than this wastes tri-plane resolution.
_LOW_FILL = 0.5


@dataclass
class CameraCheck:
    """extent: max |p|∞ of the frustum corners; worst_pose: [3] angles reaching it; poses: which poses
    were checked; errors and warnings as messages."""

    extent: float
    worst_pose: np.ndarray
    poses: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def sphere_grid(num_yaw: int = 361, num_pitch: int = 181) -> np.ndarray:
    """Angles [num_yaw·num_pitch, 3]: yaw over [0, 2π], pitch over (0, π) (ends clamped like the renderer)."""
    yaw = np.linspace(0.0, 2 * math.pi, num_yaw)
    pitch = np.clip(np.linspace(0.0, math.pi, num_pitch), PITCH_EPS, math.pi - PITCH_EPS)
    y, p = np.meshgrid(yaw, pitch, indexing="ij")
    return np.stack([y.ravel(), p.ravel(), np.zeros(y.size)], axis=1)


def frustum_corners(angles: np.ndarray, camera: CameraConfig) -> np.ndarray:
    """angles [N, 3] → world points [N, 4, 2, 3] of the four corner rays at ray_start and ray_end,
    cameras at ``camera.radius`` looking at the origin (the generator's cameras)."""
    a = torch.as_tensor(np.asarray(angles, dtype=np.float64))
    a = torch.cat([a[:, :1], a[:, 1:2].clamp(PITCH_EPS, math.pi - PITCH_EPS), a[:, 2:]], dim=1)
    cameras = Cameras.from_angles(a, camera.fov, camera.radius)
    # A 2×2 align-corners grid is exactly the four border-pixel corners of an image of any size.
    origins, directions = world_rays(cameras, pixel_grid(2, 2).unsqueeze(0))
    depths = torch.tensor([camera.ray_start, camera.ray_end], dtype=torch.float64)
    return points_along_rays(origins, directions, depths).numpy()


def check_camera(camera: CameraConfig, angles: np.ndarray | None = None,
                 stored: dict[str, float] | None = None) -> CameraCheck:
    """Check ``camera`` against a dataset's poses [N, 3] (used when the distribution is "custom"; other
    distributions are checked over the whole sphere) and its stored {"fov", "radius"}."""
    errors: list[str] = []
    if camera.distribution == "custom":
        if angles is None:
            errors.append("the camera distribution is 'custom' (poses from the dataset) but the dataset has no "
                          "camera_angles; add poses or use a sampled distribution (e.g. a Megascans preset)")
            poses, source = sphere_grid(), "a yaw × pitch grid over the sphere"
        else:
            poses, source = np.asarray(angles, dtype=np.float64), "the dataset's poses"
    else:
        poses, source = sphere_grid(), f"a yaw × pitch grid over the sphere ({camera.distribution} cameras)"
    extent_per_pose = np.abs(frustum_corners(poses, camera)).max(axis=(1, 2, 3))
    worst = int(extent_per_pose.argmax())
    check = CameraCheck(extent=float(extent_per_pose[worst]), worst_pose=poses[worst], poses=source, errors=errors)
    if check.extent > camera.cube_scale:
        yaw, pitch = check.worst_pose[:2]
        check.errors.append(
            f"the camera frustum leaves the tri-plane cube: its corners reach |p|∞ = {check.extent:.4f} > "
            f"cube_scale {camera.cube_scale} (e.g. at yaw {yaw:.3f}, pitch {pitch:.3f}); raise cube_scale to at "
            f"least {check.extent:.4f}, or narrow ray_start/ray_end or the fov"
        )
    elif check.extent < _LOW_FILL * camera.cube_scale:
        check.warnings.append(
            f"the camera frustum fills only {check.extent / camera.cube_scale:.0%} of the tri-plane cube "
            f"(|p|∞ ≤ {check.extent:.4f}, cube_scale {camera.cube_scale}); a smaller cube_scale gives finer planes"
        )
    if not camera.ray_start < camera.radius < camera.ray_end:
        check.errors.append(
            f"the scene centre (the look-at point, at distance radius = {camera.radius} from the cameras) is outside "
            f"the ray range [{camera.ray_start}, {camera.ray_end}]: the object would never be sampled"
        )
    fov = (stored or {}).get("fov")
    if fov is not None and abs(fov - camera.fov) > _FOV_RELATIVE_TOLERANCE * fov:
        check.warnings.append(
            f"the dataset's poses imply fov {fov:.3f}°, the configuration uses {camera.fov}°: the generator's "
            f"images would not match the real ones' perspective (use --fov {fov:.3f})"
        )
    return check
