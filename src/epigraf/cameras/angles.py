"""Cameras: angles → look-at-origin camera-to-world matrices, and camera-pose distributions (docs/method.md §2.1, §6.3).

Convention (the original's): angles are (yaw θ, pitch φ, roll) in radians, roll ignored; pitch is the
polar angle from +y (π/2 = horizon); yaw is measured in the x–z plane from +x towards +z; the camera sits
at radius·(sin φ cos θ, cos φ, sin φ sin θ), looks at the world origin with +y up, and uses OpenGL axes
(camera looks along its −z, +x = image right, +y = image up). Frontal view: (θ, φ) = (0, π/2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

PITCH_EPS = 1e-5
# Pitch outside [0, π] by more than this is an input error (degrees, or another convention), not rounding.
PITCH_TOLERANCE = 1e-3


@dataclass
class Cameras:
    """A batch of look-at-origin pinhole cameras.

    angles: [B, 3] (yaw, pitch, roll) in radians; fov: [B] full field of view in degrees (square
    images); radius: [B] distance of the camera from the origin.
    """

    angles: Tensor
    fov: Tensor
    radius: Tensor

    def __post_init__(self) -> None:
        if self.angles.ndim != 2 or self.angles.shape[1] != 3:
            raise ValueError(f"camera angles must be [B, 3] (yaw, pitch, roll), got {list(self.angles.shape)}")
        b = self.angles.shape[0]
        for name in ("fov", "radius"):
            value = getattr(self, name)
            if value.shape != (b,):
                raise ValueError(f"camera {name} must be [{b}], got {list(value.shape)}")
        if not (0 < self.fov).all() or not (self.fov < 180).all():
            raise ValueError(f"fov must be in (0, 180) degrees, got {self.fov.tolist()}")
        if not (self.radius > 0).all():
            raise ValueError(f"camera radius must be positive, got {self.radius.tolist()}")

    @classmethod
    def from_angles(cls, angles: Tensor, fov: float | Tensor, radius: float | Tensor) -> Cameras:
        """Broadcast scalar fov/radius over a batch of angles [B, 3]."""
        b = angles.shape[0]
        fov_t = torch.as_tensor(fov, dtype=angles.dtype, device=angles.device).expand(b).clone()
        radius_t = torch.as_tensor(radius, dtype=angles.dtype, device=angles.device).expand(b).clone()
        return cls(angles, fov_t, radius_t)

    @property
    def batch_size(self) -> int:
        return self.angles.shape[0]

    def to(self, device: torch.device | str) -> Cameras:
        return Cameras(self.angles.to(device), self.fov.to(device), self.radius.to(device))

    def cam2world(self) -> Tensor:
        """[B, 4, 4] camera-to-world matrices."""
        return cam2world_matrices(self.angles, self.radius)


def checked_angles(angles: Tensor) -> Tensor:
    """Validate pitch ∈ [0, π] and return a copy with pitch clamped to [1e-5, π − 1e-5] (never in place).

    A pitch clearly outside [0, π] means degrees or another convention; it is an error, not something to clamp.
    """
    if angles.ndim != 2 or angles.shape[1] != 3:
        raise ValueError(f"camera angles must be [B, 3] (yaw, pitch, roll), got {list(angles.shape)}")
    pitch = angles[:, 1]
    if not torch.isfinite(angles).all():
        raise ValueError("camera angles contain NaN or Inf")
    bad = (pitch < -PITCH_TOLERANCE) | (pitch > math.pi + PITCH_TOLERANCE)
    if bad.any():
        raise ValueError(
            f"camera pitch must be in [0, π] radians (polar angle from +y, π/2 = horizon); got "
            f"{pitch[bad][:4].tolist()}. Degrees, or a pitch measured from the horizon, cause this."
        )
    out = angles.clone()
    out[:, 1] = pitch.clamp(PITCH_EPS, math.pi - PITCH_EPS)
    return out


def camera_origins(angles: Tensor, radius: Tensor | float) -> Tensor:
    """angles [B, 3], radius [B] or scalar → camera centres [B, 3] = r·(sin φ cos θ, cos φ, sin φ sin θ)."""
    yaw, pitch = angles[:, 0], angles[:, 1]
    radius = torch.as_tensor(radius, dtype=angles.dtype, device=angles.device)
    return torch.stack(
        [pitch.sin() * yaw.cos(), pitch.cos(), pitch.sin() * yaw.sin()], dim=1
    ) * radius.reshape(-1, 1)


def _normalize(v: Tensor) -> Tensor:
    return v / v.norm(dim=-1, keepdim=True)


def cam2world_matrices(angles: Tensor, radius: Tensor | float) -> Tensor:
    """angles [B, 3] (pitch already valid), radius [B] or scalar → [B, 4, 4] look-at-origin cam2world.

    Rotation columns are (−left, up', −forward) with forward = −origin/|origin|, left = up × forward,
    up' = forward × left: OpenGL camera axes, det = +1.
    """
    origin = camera_origins(angles, radius)
    forward = _normalize(_normalize(-origin))
    world_up = torch.zeros_like(origin)
    world_up[:, 1] = 1.0
    left = _normalize(torch.linalg.cross(world_up, forward, dim=-1))
    up = _normalize(torch.linalg.cross(forward, left, dim=-1))
    mat = torch.zeros(angles.shape[0], 4, 4, dtype=angles.dtype, device=angles.device)
    mat[:, :3, 0] = -left
    mat[:, :3, 1] = up
    mat[:, :3, 2] = -forward
    mat[:, :3, 3] = origin
    mat[:, 3, 3] = 1.0
    return mat


def conditioning_angles(angles: Tensor) -> Tensor:
    """Yaw and pitch mapped to [−0.5, 0.5] for pose conditioning: a ↦ sign(a)·(|a| mod 2π)/(2π). [B, 3] → [B, 2]."""
    a = angles[:, :2]
    return a.sign() * (a.abs() % (2 * math.pi)) / (2 * math.pi)


CAMERA_DISTRIBUTIONS = ("custom", "spherical_uniform", "normal")


def sample_spherical_uniform(batch_size: int, generator: torch.Generator | None = None) -> Tensor:
    """Angles [B, 3] uniform on the sphere: yaw ~ U(−π, π), pitch = arccos(1 − 2v), v ~ U(0, 1) clamped."""
    u = torch.rand(batch_size, 2, generator=generator)
    yaw = (u[:, 0] * 2 - 1) * math.pi
    v = u[:, 1].clamp(PITCH_EPS, 1 - PITCH_EPS)
    pitch = torch.arccos(1 - 2 * v)
    return torch.stack([yaw, pitch, torch.zeros_like(yaw)], dim=1)


def sample_normal(
    batch_size: int,
    yaw_mean: float = 0.0,
    yaw_std: float = 0.3,
    pitch_mean: float = math.pi / 2,
    pitch_std: float = 0.155,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Angles [B, 3] with Gaussian yaw and pitch (pitch clamped into (0, π)), roll 0."""
    n = torch.randn(batch_size, 2, generator=generator)
    yaw = yaw_mean + yaw_std * n[:, 0]
    pitch = (pitch_mean + pitch_std * n[:, 1]).clamp(PITCH_EPS, math.pi - PITCH_EPS)
    return torch.stack([yaw, pitch, torch.zeros_like(yaw)], dim=1)
