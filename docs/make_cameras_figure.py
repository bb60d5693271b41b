"""Draw docs/cameras.png, the camera-convention figure of docs/cameras.md: ``python docs/make_cameras_figure.py``."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from epigraf.cameras import camera_origins
from epigraf.cameras.conventions import angles_to_cam2world
from epigraf.data.plots import (
    AXIS_COLOURS,
    INK,
    Projector,
    circle_points,
    draw_arrow,
    draw_curve,
    draw_world_axes,
    font,
)

GREY, LIGHT = (150, 150, 150), (215, 215, 215)
CAMERA = (120, 40, 160)


def _arc(start: np.ndarray, end: np.ndarray, radius: float, n: int = 40) -> np.ndarray:
    """Points [n, 3] on the great-circle arc from direction ``start`` to ``end`` at ``radius``."""
    start, end = start / np.linalg.norm(start), end / np.linalg.norm(end)
    omega = math.acos(float(np.clip(start @ end, -1, 1)))
    t = np.linspace(0, 1, n)[:, None]
    return radius * (np.sin((1 - t) * omega) * start + np.sin(t * omega) * end) / math.sin(omega)


def _camera(draw: ImageDraw.ImageDraw, proj: Projector, yaw: float, pitch: float, label: str,
            label_offset: tuple[int, int] = (8, -26), size: float = 0.22, axes: bool = False) -> None:
    """A small frustum at the camera of (yaw, pitch), radius 1, looking at the origin."""
    c2w = angles_to_cam2world([[yaw, pitch, 0.0]], 1.0)[0]
    o, right, up, back = c2w[:3, 3], c2w[:3, 0], c2w[:3, 1], c2w[:3, 2]
    corners = [o + size * (-back * 1.3 + sx * right + sy * up) for sx, sy in ((-1, 1), (1, 1), (1, -1), (-1, -1))]
    po = proj.point(o)
    pc = [proj.point(c) for c in corners]
    for c in pc:
        draw.line([po, c], fill=CAMERA, width=2)
    draw.polygon(pc, outline=CAMERA, width=2)
    draw.line([po, proj.point((0, 0, 0))], fill=LIGHT, width=1)
    draw.text((po[0] + label_offset[0], po[1] + label_offset[1]), label, fill=CAMERA, font=font(15))
    if axes:
        draw_arrow(draw, po, proj.point(o + 0.45 * right), AXIS_COLOURS["z"], width=2, head=9)
        draw_arrow(draw, po, proj.point(o + 0.45 * up), AXIS_COLOURS["y"], width=2, head=9)
        end = proj.point(o + 0.45 * right)
        draw.text((end[0] - 10, end[1] + 4), "image right = −z", fill=AXIS_COLOURS["z"], font=font(14))
        end = proj.point(o + 0.45 * up)
        draw.text((end[0] + 6, end[1] - 10), "image up = +y", fill=AXIS_COLOURS["y"], font=font(14))


def world_panel(draw: ImageDraw.ImageDraw) -> None:
    proj = Projector((330, 360), 200, azimuth_deg=25, elevation_deg=20)
    for axis in (0, 1, 2):
        draw_curve(draw, proj, circle_points(axis), GREY, back_colour=LIGHT)
    draw_world_axes(draw, proj, length=1.45, labels={"x": "+x", "y": "+y (up)", "z": "+z"})
    yaw, pitch = math.radians(115), math.radians(50)
    cam = camera_origins(torch.tensor([[yaw, pitch, 0.0]], dtype=torch.float64), 1.0)[0].numpy()
    foot = np.array([cam[0], 0.0, cam[2]])
    draw.line([proj.point(cam), proj.point(foot)], fill=GREY, width=1)
    draw.line([proj.point((0, 0, 0)), proj.point(foot / np.linalg.norm(foot))], fill=GREY, width=1)
    draw_curve(draw, proj, _arc(np.array([1.0, 0, 0]), foot, 0.45), (200, 120, 0), width=3)
    draw_curve(draw, proj, _arc(np.array([0, 1.0, 0]), cam, 0.35), (0, 140, 140), width=3)
    tx, ty = proj.point(_arc(np.array([1.0, 0, 0]), foot, 0.55)[20])
    draw.text((tx - 8, ty), "yaw θ", fill=(200, 120, 0), font=font(17))
    px, py = proj.point(_arc(np.array([0, 1.0, 0]), cam, 0.45)[20])
    draw.text((px + 4, py - 20), "pitch φ", fill=(0, 140, 140), font=font(17))
    _camera(draw, proj, 0.0, math.pi / 2, "frontal camera (θ, φ) = (0, π/2)", label_offset=(-60, 50), axes=True)
    _camera(draw, proj, yaw, pitch, "(θ, φ)")
    draw.text((30, 20), "World: +y up, cameras on a sphere looking at the origin", fill=INK, font=font(20))
    draw.text((30, 48), "origin = r·(sin φ cos θ, cos φ, sin φ sin θ); yaw from +x towards +z, pitch from +y",
              fill=INK, font=font(15))


def image_panel(draw: ImageDraw.ImageDraw, x0: int = 760, y0: int = 170, side: int = 320) -> None:
    draw.text((x0 - 40, 20), "Camera (OpenGL axes) and pixel grid", fill=INK, font=font(20))
    draw.text((x0 - 40, 48), "looks along −z; x′ = image right, y′ = image up", fill=INK, font=font(15))
    draw.rectangle([x0, y0, x0 + side, y0 + side], outline=INK, width=2)
    n = 5
    cell = side / n
    for i in range(n):
        for j in range(n):
            cx, cy = x0 + (j + 0.5) * cell, y0 + (i + 0.5) * cell
            draw.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=GREY)
    first, last = x0 + 0.5 * cell, x0 + (n - 0.5) * cell
    draw.ellipse([first - 5, y0 + 0.5 * cell - 5, first + 5, y0 + 0.5 * cell + 5], fill=(200, 40, 40))
    draw.text((first - 50, y0 - 26), "row 0, col 0: (x′, y′) = (−1, 1)", fill=(200, 40, 40), font=font(14))
    draw.text((last - 60, y0 + side + 8), "(1, −1)", fill=INK, font=font(14))
    mid = y0 + side / 2
    draw_arrow(draw, (x0 + side / 2, mid), (x0 + side / 2 + 120, mid), AXIS_COLOURS["x"])
    draw_arrow(draw, (x0 + side / 2, mid), (x0 + side / 2, mid - 120), AXIS_COLOURS["y"])
    draw.text((x0 + side / 2 + 90, mid + 6), "x′", fill=AXIS_COLOURS["x"], font=font(17))
    draw.text((x0 + side / 2 + 8, mid - 128), "y′", fill=AXIS_COLOURS["y"], font=font(17))
    notes = ["±1 are the centres of the border pixels (align corners)",
             "ray direction = normalise(x′, y′, −1/tan(fov/2)), rotated to the world",
             "fov = full angle between the border-pixel-centre rays",
             "OpenCV (EG3D): same x, y and z negated — looks along +z"]
    for k, text in enumerate(notes):
        draw.text((x0 - 40, y0 + side + 40 + 22 * k), text, fill=INK, font=font(14))


def main() -> None:
    img = Image.new("RGB", (1240, 640), "white")
    draw = ImageDraw.Draw(img)
    world_panel(draw)
    image_panel(draw)
    img.save(Path(__file__).with_name("cameras.png"), optimize=True)


if __name__ == "__main__":
    main()
