"""What training shows of itself: a grid of reals (once), grids of G_ema fakes and short camera-path videos.

Fakes use G_ema with the stored constant noise, ψ = 1 and deterministic rendering, at fixed latents, so
successive grids show the training's progress rather than sampling noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from epigraf.cameras.paths import front_circle, orbit
from epigraf.export.images import image_grid, save_png, to_uint8
from epigraf.export.video import resolve_format, video_path, write_video
from epigraf.inference import render_batches
from epigraf.nn.generator import Generator

GRID_COLUMNS = 4
EARLY_SECONDS = 3600.0  # the first hour of a run, in which grids also follow the clock


@dataclass
class FakesSchedule:
    """When a tick writes a grid of fakes, besides the grids at start and with every snapshot.

    Every ``every_ticks`` ticks, and in the first hour after ``start`` (seconds, ``time.time()``) also once
    ``every_minutes`` of wall time have passed since the last grid: on a CPU the first tick-based grid comes
    after hours, and a new user wants to see pictures within minutes. ``every_ticks`` = 0 turns grids off.
    """

    every_ticks: int
    every_minutes: float
    start: float
    last: float | None = None

    def due(self, tick: int, now: float) -> bool:
        if not self.every_ticks:
            return False
        since_last = now - (self.start if self.last is None else self.last)
        early = (self.every_minutes > 0 and now - self.start < EARLY_SECONDS
                 and since_last >= self.every_minutes * 60)
        return self.on_tick(tick) or early

    def on_tick(self, tick: int) -> bool:
        """Whether ``tick`` is on the tick-based schedule: its grid also gets the camera-path video. Grids at
        start, by the clock or on a stop signal go without (a CPU spends minutes on a video)."""
        return bool(self.every_ticks) and tick % self.every_ticks == 0


def save_image_grid(images: Tensor, path: Path, columns: int = GRID_COLUMNS) -> Path:
    """images [N, 3, H, W] in [−1, 1] → one PNG with ``columns`` images per row."""
    return save_png(image_grid(to_uint8(images), columns), path)


@torch.no_grad()
def render_fake_grid(G: Generator, z: Tensor, c: Tensor | None, angles: Tensor, batch_size: int = 4) -> Tensor:
    """G_ema renders of latents z [N, z_dim] at cameras angles [N, 3] → [N, 3, R, R] on the CPU."""
    device = next(G.parameters()).device
    parts = []
    for i in range(0, z.shape[0], batch_size):
        ci = None if c is None else c[i : i + batch_size].to(device)
        parts.append(G(z[i : i + batch_size].to(device), ci, angles[i : i + batch_size].to(device),
                       truncation_psi=1.0, deterministic=True).image.cpu())
    return torch.cat(parts)


@torch.no_grad()
def save_camera_path_video(G: Generator, z: Tensor, c: Tensor | None, path_stem: Path, num_frames: int = 32,
                           fps: float = 15.0) -> Path:
    """A grid video of the latents z [N, z_dim] along the training-time camera path: ``front_circle`` (yaw ±0.5,
    pitch ±0.3, fov ±1°) for datasets with frontal poses, a full orbit for 360° datasets. MP4 when available."""
    cam = G.cfg.camera
    if cam.distribution == "custom":
        cameras = front_circle(num_frames, cam.fov, cam.radius, yaw_amplitude=0.5, pitch_amplitude=0.3)
    else:
        cameras = orbit(num_frames, cam.fov, cam.radius)
    device = next(G.parameters()).device
    ws = G.mapping(z.to(device), None if c is None else c.to(device))
    per_latent = []
    for i in range(z.shape[0]):
        frames = torch.cat([out.image.cpu() for out in render_batches(G, ws[i : i + 1], cameras)])
        per_latent.append(to_uint8(frames))  # [T, H, W, 3]
    clips = np.stack(per_latent, axis=1)  # [T, N, H, W, 3]
    fmt = resolve_format("auto")
    return write_video((image_grid(frame, GRID_COLUMNS) for frame in clips), video_path(path_stem, fmt), fps)
