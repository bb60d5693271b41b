"""Frames → video files: MP4 (H.264) through the optional ``video`` extra, or dependency-free GIF / PNG frames.

MP4 needs the ``imageio-ffmpeg`` package (``pip install 'epigraf[video]'``), which ships its own ffmpeg
binary. Without it, GIF (Pillow, always installed) and a folder of PNG frames still work.

    write_video(frames, "orbit.mp4", fps=30)     # frames: iterable of uint8 [H, W, 3]
    write_video(frames, "orbit.gif", fps=30)
    write_video(frames, "orbit_frames", fps=30)  # no suffix → frame_0000.png, frame_0001.png, ...
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from epigraf.export.images import save_png

log = logging.getLogger(__name__)

FORMATS = ("mp4", "gif", "frames")
MP4_MISSING = ("MP4 needs the optional video extra: pip install 'epigraf[video]' (the imageio-ffmpeg package); "
               "or choose --format gif or --format frames, which need nothing extra")


def mp4_available() -> bool:
    """Whether the ``video`` extra (imageio-ffmpeg) is installed; checked without importing it."""
    return importlib.util.find_spec("imageio_ffmpeg") is not None


def resolve_format(fmt: str) -> str:
    """``auto`` → mp4 when the extra is installed, else gif (saying so); mp4 without the extra is an error."""
    if fmt == "auto":
        if mp4_available():
            return "mp4"
        log.warning("imageio-ffmpeg is not installed, writing GIF instead of MP4 (pip install 'epigraf[video]')")
        return "gif"
    if fmt not in FORMATS:
        raise ValueError(f"unknown video format {fmt!r}; choose from {['auto', *FORMATS]}")
    if fmt == "mp4" and not mp4_available():
        raise ValueError(MP4_MISSING)
    return fmt


def video_path(stem: str | os.PathLike, fmt: str) -> Path:
    """Where ``write_video`` puts a video of format ``fmt`` named ``stem`` (frames: a folder)."""
    stem = Path(stem)
    return stem if fmt == "frames" else stem.with_name(f"{stem.name}.{fmt}")


def write_video(frames: Iterable[np.ndarray], path: str | os.PathLike, fps: float = 30.0) -> Path:
    """Write uint8 [H, W, 3] frames; the format follows the suffix (.mp4, .gif, none = folder of PNGs).

    MP4: H.264, yuv420p (an odd side is padded up to even by ffmpeg). GIF: Pillow, per-frame palettes, looping,
    frame time rounded to 10 ms by the format; identical consecutive frames are merged into one longer frame.
    """
    path = Path(path)
    if fps <= 0:
        raise ValueError(f"--fps must be positive, got {fps}")
    suffix = path.suffix.lower()
    if suffix == ".mp4":
        return _write_mp4(frames, path, fps)
    if suffix == ".gif":
        images = [Image.fromarray(f) for f in frames]
        if not images:
            raise ValueError("no frames to write")
        path.parent.mkdir(parents=True, exist_ok=True)
        images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
        return path
    if suffix:
        raise ValueError(f"unknown video suffix {suffix!r}: use .mp4, .gif, or no suffix for a folder of PNG frames")
    path.mkdir(parents=True, exist_ok=True)
    count = 0
    for frame in frames:
        save_png(frame, path / f"frame_{count:04d}.png")
        count += 1
    if count == 0:
        raise ValueError("no frames to write")
    return path


def _write_mp4(frames: Iterable[np.ndarray], path: Path, fps: float) -> Path:
    if not mp4_available():
        raise ValueError(MP4_MISSING)
    imageio_ffmpeg = importlib.import_module("imageio_ffmpeg")
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    try:
        for frame in frames:
            if writer is None:
                h, w = frame.shape[:2]
                # macro_block_size 2: yuv420p H.264 needs even sides, nothing more (the default 16 would rescale).
                writer = imageio_ffmpeg.write_frames(str(path), (w, h), fps=fps, codec="libx264", quality=8,
                                                     macro_block_size=2, ffmpeg_log_level="error")
                writer.send(None)
            writer.send(np.ascontiguousarray(frame))
    finally:
        if writer is not None:
            writer.close()  # also stops ffmpeg when rendering failed half-way
    if writer is None:
        raise ValueError("no frames to write")
    return path
