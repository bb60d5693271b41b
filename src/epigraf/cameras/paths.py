"""Camera paths for videos and multi-view grids (docs/method.md §7.2).

Every path returns a ``Cameras`` batch of T frames: angles [T, 3] (yaw, pitch, roll = 0; radians, pitch
clamped into (0, π)), fov [T] (degrees) and radius [T]. ``fov`` and ``radius`` are the model's camera
(``G.cfg.camera``) unless a path changes them.

Periodic paths (``front_circle``, ``orbit``) sample t = i / T, so the last frame leads back to the first and
the video loops seamlessly; sweeps (``wiggle``, ``line``) sample t = i / (T − 1) and hit both ends.

    cams = front_circle(64, fov=12.0, radius=1.0)
    for frame in range(len(cams.angles)):
        out = G.render(planes, take(cams, [frame]))
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from epigraf.cameras.angles import PITCH_EPS, Cameras, checked_angles

PATHS = ("front_circle", "wiggle", "line", "orbit")


def _cameras(yaw: Tensor, pitch: Tensor, fov: Tensor | float, radius: float) -> Cameras:
    """yaw, pitch [T] → Cameras; pitch clamped into (0, π) so a path that touches a pole stays valid."""
    pitch = pitch.clamp(PITCH_EPS, math.pi - PITCH_EPS)
    angles = torch.stack([yaw, pitch, torch.zeros_like(yaw)], dim=1)
    fov = torch.as_tensor(fov, dtype=torch.float32).expand(len(yaw)).clone()
    return Cameras(angles, fov, torch.full_like(yaw, radius))


def _check_frames(num_frames: int, minimum: int = 1) -> None:
    if num_frames < minimum:
        raise ValueError(f"a camera path needs at least {minimum} frame(s), got {num_frames}")


def _periodic(num_frames: int) -> Tensor:
    return torch.arange(num_frames, dtype=torch.float32) / num_frames


def _sweep(num_frames: int) -> Tensor:
    return torch.linspace(0.0, 1.0, num_frames) if num_frames > 1 else torch.zeros(1)


def front_circle(num_frames: int = 64, fov: float = 12.0, radius: float = 1.0, yaw_amplitude: float = 0.3,
                 pitch_amplitude: float = 0.2, fov_amplitude: float = 1.0) -> Cameras:
    """The original's teaser video: fly around the front and zoom in/out.

    yaw = 0.3·sin(2πt), pitch = π/2 + 0.2·cos(2πt), fov = fov₀ + 1.0·sin(2πt) (amplitudes configurable; the
    training-time videos use yaw 0.5, pitch 0.3, fov 1.0).
    """
    _check_frames(num_frames)
    phase = 2 * math.pi * _periodic(num_frames)
    return _cameras(yaw_amplitude * phase.sin(), math.pi / 2 + pitch_amplitude * phase.cos(),
                    fov + fov_amplitude * phase.sin(), radius)


def wiggle(num_frames: int = 64, fov: float = 12.0, radius: float = 1.0, yaw_range: float = 1.57,
           pitch_amplitude: float = 0.5) -> Cameras:
    """Sweep yaw −1.57 → 1.57 (side to side) while pitch swings once: π/2 + 0.5·cos(2πt)."""
    _check_frames(num_frames)
    t = _sweep(num_frames)
    return _cameras(yaw_range * (2 * t - 1), math.pi / 2 + pitch_amplitude * (2 * math.pi * t).cos(), fov, radius)


def line(num_frames: int = 64, fov: float = 12.0, radius: float = 1.0, start: tuple[float, float] = (-0.5, math.pi / 2),
         end: tuple[float, float] = (0.5, math.pi / 2)) -> Cameras:
    """Move linearly in (yaw, pitch) from ``start`` to ``end`` (both ends included)."""
    _check_frames(num_frames)
    t = _sweep(num_frames)
    return _cameras(start[0] + (end[0] - start[0]) * t, start[1] + (end[1] - start[1]) * t, fov, radius)


def orbit(num_frames: int = 64, fov: float = 12.0, radius: float = 1.0, pitch: float = math.pi / 2) -> Cameras:
    """A full 360° turn of yaw at a fixed pitch (from the front, yaw 0, round to the front again)."""
    _check_frames(num_frames)
    yaw = 2 * math.pi * _periodic(num_frames)
    return _cameras(yaw, torch.full_like(yaw, pitch), fov, radius)


def points(yaws: Sequence[float], pitches: Sequence[float] | float = math.pi / 2, fov: float = 12.0,
           radius: float = 1.0) -> Cameras:
    """An explicit list of views (e.g. the original's front grid: yaws [0, −0.3, 0.3] at pitch π/2).

    ``pitches`` is one value for all views or one per yaw; a pitch outside [0, π] is an error.
    """
    yaw = torch.tensor([float(y) for y in yaws], dtype=torch.float32)
    _check_frames(len(yaw))
    pitch = torch.tensor([float(p) for p in pitches], dtype=torch.float32) if isinstance(pitches, Sequence) \
        else torch.full_like(yaw, float(pitches))
    if pitch.shape != yaw.shape:
        raise ValueError(f"{len(pitch)} pitches for {len(yaw)} yaws")
    # Explicit pitches are checked, not only clamped: one far outside [0, π] is a mistake (degrees?).
    angles = checked_angles(torch.stack([yaw, pitch, torch.zeros_like(yaw)], dim=1))
    return _cameras(angles[:, 0], angles[:, 1], fov, radius)


def camera_path(name: str, num_frames: int, fov: float, radius: float) -> Cameras:
    """A named path (one of ``PATHS``) with its default shape, for the command line."""
    paths = {"front_circle": front_circle, "wiggle": wiggle, "line": line, "orbit": orbit}
    if name not in paths:
        raise ValueError(f"unknown camera path {name!r}; choose from {list(PATHS)}")
    return paths[name](num_frames, fov=fov, radius=radius)


def take(cameras: Cameras, index: slice | Sequence[int] | Tensor) -> Cameras:
    """The cameras at ``index`` (a slice or integer indices), e.g. one batch of a path's frames."""
    if not isinstance(index, slice):
        index = torch.as_tensor(index, dtype=torch.long)
    return Cameras(cameras.angles[index], cameras.fov[index], cameras.radius[index])
