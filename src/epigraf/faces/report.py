"""What ``epigraf dataset faces`` shows: histograms of the estimated yaw and pitch, and the skipped photos."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from epigraf.data.plots import GRID, INK, POINT, font


def _histogram(draw: ImageDraw.ImageDraw, values_deg: np.ndarray, box: tuple[int, int, int, int],
               lo: float, hi: float, label: str, bins: int = 36) -> None:
    x0, y0, x1, y1 = box
    counts, edges = np.histogram(np.clip(values_deg, lo, hi), bins=bins, range=(lo, hi))
    top = max(int(counts.max()), 1)
    small = font(13)
    for tick in np.linspace(lo, hi, 7):
        x = x0 + (tick - lo) / (hi - lo) * (x1 - x0)
        draw.line([(x, y0), (x, y1)], fill=GRID)
        draw.text((x - 12, y1 + 6), f"{tick:.0f}", fill=INK, font=small)
    for count, left, right in zip(counts, edges[:-1], edges[1:], strict=True):
        if count:
            xa = x0 + (left - lo) / (hi - lo) * (x1 - x0)
            xb = x0 + (right - lo) / (hi - lo) * (x1 - x0)
            draw.rectangle([xa + 1, y1 - count / top * (y1 - y0 - 10), xb - 1, y1], fill=POINT)
    draw.rectangle(box, outline=INK)
    draw.text((x0, y0 - 22), f"{label}   (tallest bar: {top})", fill=INK, font=font(15))


def pose_histograms(angles: np.ndarray, title: str) -> Image.Image:
    """angles [N, 3] (radians) → a figure with the histograms of yaw (−90° to 90°, 0 = frontal) and pitch
    (45° to 135° from +y, 90° = level); values beyond the range are counted in the end bins."""
    a = np.degrees(np.asarray(angles, dtype=np.float64).reshape(-1, 3))
    img = Image.new("RGB", (1000, 360), "white")
    draw = ImageDraw.Draw(img)
    draw.text((20, 12), f"{title} ({len(a)} faces)", fill=INK, font=font(20))
    _histogram(draw, a[:, 0], (40, 80, 480, 310), -90, 90, "yaw (°; + = nose towards the image's right)")
    _histogram(draw, a[:, 1], (540, 80, 980, 310), 45, 135, "pitch (° from +y; < 90 = camera above)")
    return img


def skipped_text(skipped: list[tuple[str, str]]) -> str:
    """One ``name: reason`` line per skipped photo."""
    return "".join(f"{name}: {reason}\n" for name, reason in skipped)


def pose_summary(angles: np.ndarray) -> str:
    """Mean ± std and range of yaw and pitch, in degrees, on one line."""
    a = np.degrees(np.asarray(angles, dtype=np.float64).reshape(-1, 3))
    parts = [f"{what} {a[:, i].mean():.1f}° ± {a[:, i].std():.1f}° ({a[:, i].min():.1f}° to {a[:, i].max():.1f}°)"
             for i, what in ((0, "yaw"), (1, "pitch"))]
    return ", ".join(parts)

