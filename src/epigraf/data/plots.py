"""Pictures of a dataset drawn with PIL alone (no plotting dependency): the camera distribution and a
contact sheet of sample images. ``Projector`` and the drawing helpers also draw docs/cameras.png."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from epigraf.cameras import camera_origins

INK = (30, 30, 30)
GRID = (225, 225, 225)
AXIS_COLOURS = {"x": (200, 40, 40), "y": (30, 150, 50), "z": (40, 80, 200)}
POINT = (40, 90, 200)
# Scatter plots of huge datasets are unreadable anyway; drawing fewer points keeps `info` fast.
_MAX_POINTS = 20000


@functools.lru_cache(maxsize=16)
def font(size: int = 14) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans where installed (it has Greek letters and minus signs), else PIL's built-in font."""
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default(size=size)


class Projector:
    """Orthographic view of 3D world points [N, 3] → canvas pixels [N, 2] and depth [N] (larger =
    nearer the viewer). The viewer sits at azimuth (from +x towards +z) and elevation (above the x–z
    plane) with +y drawn upwards."""

    def __init__(self, center: tuple[float, float], scale: float, azimuth_deg: float = 55.0,
                 elevation_deg: float = 25.0) -> None:
        az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
        view = np.array([math.cos(el) * math.cos(az), math.sin(el), math.cos(el) * math.sin(az)])
        right = np.cross([0.0, 1.0, 0.0], view)
        right /= np.linalg.norm(right)
        self.view, self.right, self.up = view, right, np.cross(view, right)
        self.center = np.asarray(center, dtype=np.float64)
        self.scale = scale

    def __call__(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = np.atleast_2d(np.asarray(points, dtype=np.float64))
        xy = np.stack([p @ self.right, -(p @ self.up)], axis=1) * self.scale + self.center
        return xy, p @ self.view

    def point(self, p: Sequence[float]) -> tuple[float, float]:
        xy, _ = self(np.asarray(p, dtype=np.float64)[None])
        return float(xy[0, 0]), float(xy[0, 1])


def draw_arrow(draw: ImageDraw.ImageDraw, start: tuple[float, float], end: tuple[float, float],
               colour: tuple[int, int, int], width: int = 3, head: float = 12.0) -> None:
    draw.line([start, end], fill=colour, width=width)
    angle = math.atan2(end[1] - start[1], end[0] - start[0])
    wings = [(end[0] - head * math.cos(angle + s * 0.4), end[1] - head * math.sin(angle + s * 0.4)) for s in (1, -1)]
    draw.polygon([end, *wings], fill=colour)


def draw_curve(draw: ImageDraw.ImageDraw, proj: Projector, points: np.ndarray, colour: tuple[int, int, int],
               width: int = 1, back_colour: tuple[int, int, int] | None = None) -> None:
    """A 3D polyline [N, 3]; segments behind the view plane through the origin in ``back_colour``."""
    xy, depth = proj(points)
    for i in range(len(points) - 1):
        behind = depth[i] + depth[i + 1] < 0
        if behind and back_colour is None:
            continue
        draw.line([tuple(xy[i]), tuple(xy[i + 1])], fill=back_colour if behind else colour, width=width)


def circle_points(normal_axis: int, radius: float = 1.0, n: int = 181) -> np.ndarray:
    """[n, 3] circle around the origin in the plane orthogonal to world axis ``normal_axis``."""
    t = np.linspace(0, 2 * math.pi, n)
    a, b = [i for i in range(3) if i != normal_axis]
    out = np.zeros((n, 3))
    out[:, a], out[:, b] = radius * np.cos(t), radius * np.sin(t)
    return out


def draw_world_axes(draw: ImageDraw.ImageDraw, proj: Projector, length: float = 1.35,
                    labels: dict[str, str] | None = None) -> None:
    labels = labels or {"x": "+x", "y": "+y", "z": "+z"}
    origin = proj.point((0, 0, 0))
    for i, name in enumerate("xyz"):
        tip = np.zeros(3)
        tip[i] = length
        end = proj.point(tip)
        draw_arrow(draw, origin, end, AXIS_COLOURS[name])
        draw.text((end[0] + 6, end[1] - 8), labels[name], fill=AXIS_COLOURS[name], font=font(15))


def camera_distribution_figure(angles: np.ndarray, title: str = "camera distribution") -> Image.Image:
    """angles [N, 3] → a figure: yaw/pitch scatter (left) and camera directions on the unit sphere (right)."""
    a = np.asarray(angles, dtype=np.float64)
    if len(a) > _MAX_POINTS:
        a = a[np.linspace(0, len(a) - 1, _MAX_POINTS).astype(int)]
    img = Image.new("RGB", (1240, 580), "white")
    draw = ImageDraw.Draw(img, "RGBA")
    draw.text((20, 12), f"{title} ({len(angles)} poses)", fill=INK, font=font(20))
    _yaw_pitch_panel(draw, a, (80, 70, 600, 490))
    _sphere_panel(draw, a, center=(880, 300), scale=190)
    return img


def _yaw_pitch_panel(draw: ImageDraw.ImageDraw, a: np.ndarray, box: tuple[int, int, int, int]) -> None:
    x0, y0, x1, y1 = box

    def to_px(yaw_deg: np.ndarray, pitch_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return x0 + (yaw_deg + 180) / 360 * (x1 - x0), y0 + pitch_deg / 180 * (y1 - y0)

    small = font(13)
    for yaw in range(-180, 181, 45):
        x = float(to_px(np.array(yaw), np.array(0))[0])
        draw.line([(x, y0), (x, y1)], fill=GRID)
        draw.text((x - 12, y1 + 6), f"{yaw}", fill=INK, font=small)
    for pitch in range(0, 181, 30):
        y = float(to_px(np.array(0), np.array(pitch))[1])
        draw.line([(x0, y), (x1, y)], fill=GRID if pitch != 90 else (160, 160, 160))
        draw.text((x0 - 34, y - 8), f"{pitch}", fill=INK, font=small)
    draw.rectangle(box, outline=INK)
    draw.text(((x0 + x1) / 2 - 120, y1 + 28), "yaw (°, from +x towards +z)", fill=INK, font=font(15))
    draw.text((x0 - 70, y0 - 28), "pitch (°, from +y; 90 = horizon)", fill=INK, font=font(15))
    xs, ys = to_px(np.degrees(np.arctan2(np.sin(a[:, 0]), np.cos(a[:, 0]))), np.degrees(a[:, 1]))
    for x, y in zip(xs, ys, strict=True):
        draw.ellipse([x - 2.5, y - 2.5, x + 2.5, y + 2.5], fill=(*POINT, 150))


def _sphere_panel(draw: ImageDraw.ImageDraw, a: np.ndarray, center: tuple[int, int], scale: float) -> None:
    proj = Projector(center, scale)
    draw.ellipse([center[0] - scale, center[1] - scale, center[0] + scale, center[1] + scale], outline=GRID, width=2)
    for axis in (0, 1, 2):
        draw_curve(draw, proj, circle_points(axis), (170, 170, 170), back_colour=GRID)
    pos = camera_origins(torch.from_numpy(a), 1.0).numpy()
    xy, depth = proj(pos)
    for i in np.argsort(depth):
        shade = 0.35 + 0.65 * (depth[i] + 1) / 2  # nearer cameras are drawn darker and on top
        colour = tuple(int(255 - shade * (255 - c)) for c in POINT)
        draw.ellipse([xy[i, 0] - 3, xy[i, 1] - 3, xy[i, 0] + 3, xy[i, 1] + 3], fill=colour)
    draw_world_axes(draw, proj, labels={"x": "+x (yaw 0)", "y": "+y (up)", "z": "+z (yaw 90°)"})
    fx, fy = proj.point((1.0, 0.0, 0.0))
    draw.regular_polygon((fx, fy, 9), 4, rotation=45, outline=(200, 40, 40), width=2)
    draw.text((center[0] - scale, center[1] + scale + 24),
              "camera directions on the unit sphere\nred diamond = frontal camera (yaw 0, pitch 90°)",
              fill=INK, font=font(15))


def contact_sheet(images: Sequence[np.ndarray], columns: int = 8, cell: int = 128, pad: int = 4) -> Image.Image:
    """uint8 images [3, R, R] → one grid image, each resized to ``cell``² (Lanczos)."""
    if not images:
        raise ValueError("no images for the contact sheet")
    columns = min(columns, len(images))
    rows = math.ceil(len(images) / columns)
    sheet = Image.new("RGB", (columns * (cell + pad) + pad, rows * (cell + pad) + pad), "white")
    for i, chw in enumerate(images):
        tile = Image.fromarray(np.ascontiguousarray(chw.transpose(1, 2, 0)))
        if tile.size != (cell, cell):
            tile = tile.resize((cell, cell), Image.Resampling.LANCZOS)
        sheet.paste(tile, (pad + (i % columns) * (cell + pad), pad + (i // columns) * (cell + pad)))
    return sheet
