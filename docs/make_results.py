"""The figures of ``docs/results.md`` from a trained network and its KID curve.

    python docs/make_results.py --network runs/00000-builtin/network-0000040000.safetensors \
        --kid-curve benchmarks/results/kid_curve.json [--geometry RUN/metric-geometry.jsonl] [--out docs/results]

Writes ``fakes_vs_reals.png`` (G_ema renders at the cameras, and with the labels, of 16 real images, beside
those images), ``samples.png`` (32 seeds from one camera; for a class-conditional model 6 seeds per class, a
row each), ``turntable.gif`` (four seeds, or seed 0 of every class, turning a full circle),
``depth_normals.png`` (image, depth and normal map per seed or class), ``mesh_preview.png`` (the extracted
meshes, flat-shaded from three views), on built-in data ``meshes_vs_truth.png`` (each class's true mesh beside
the one the geometry metric scores), ``kid_curve.png`` and ``geometry_curve.png`` (the geometry metric's means
over classes against kimg, from a run's ``metric-geometry.jsonl``). A class-conditional model's figures show the
first four classes where there is room for four (``--classes`` picks others).
Everything renders deterministically (fixed seeds, no ray jitter), so the figures are reproducible, and with
``epigraf generate``'s ray samples (``--ray-step-multiplier``, default 2× the training's), so they show what it
renders.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from epigraf.cameras.paths import orbit, points
from epigraf.checkpoint import load_checkpoint
from epigraf.data.builtin import default_dir
from epigraf.data.dataset import ImageDataset
from epigraf.data.plots import font
from epigraf.export.images import depth_to_uint8, image_grid, normals_to_uint8, to_uint8
from epigraf.export.video import write_video
from epigraf.geometry import extract_geometry
from epigraf.inference import DEFAULT_RAY_STEP_MULTIPLIER, render_all, with_ray_steps
from epigraf.metrics.builtin_truth import load_builtin_truth, seen_radius
from epigraf.metrics.geometry import GeneratorModel, GeometryProtocol, protocol_mesh
from epigraf.nn.generator import Generator
from epigraf.process_settings import flush_denormals
from epigraf.seeds import seeds_to_ws

SEEDS = [0, 1, 2, 3]
ZOOM = 3  # 64² renders are shown 3× larger (nearest neighbour, so no detail is invented)


def zoom(image: np.ndarray, factor: int = ZOOM) -> np.ndarray:
    return image.repeat(factor, axis=0).repeat(factor, axis=1)


def labelled(image: np.ndarray, title: str) -> Image.Image:
    """The image under a one-line title."""
    canvas = Image.new("RGB", (image.shape[1], image.shape[0] + 24), "white")
    canvas.paste(Image.fromarray(image), (0, 24))
    ImageDraw.Draw(canvas).text((4, 4), title, fill="black", font=font(14))
    return canvas


def side_by_side(panels: list[Image.Image], gap: int = 12) -> Image.Image:
    width = sum(p.width for p in panels) + gap * (len(panels) - 1)
    canvas = Image.new("RGB", (width, max(p.height for p in panels)), "white")
    x = 0
    for p in panels:
        canvas.paste(p, (x, 0))
        x += p.width + gap
    return canvas


@torch.no_grad()
def fakes_vs_reals(G, dataset: ImageDataset, out: Path, count: int = 16) -> None:
    idx = np.random.RandomState(0).choice(len(dataset), count, replace=False)
    reals = np.stack([dataset[int(i)].image.transpose(1, 2, 0) for i in idx])
    angles = torch.from_numpy(dataset.camera_angles[idx])
    c = torch.from_numpy(dataset.labels[idx]) if G.c_dim else None
    z = torch.from_numpy(np.random.RandomState(1).randn(count, G.z_dim)).float()
    fakes = to_uint8(G(z, c, angles, truncation_psi=1.0, deterministic=True).image)
    panels = [labelled(zoom(image_grid(x, 4)), title) for x, title in
              ((fakes, "G_ema (ψ = 1), at the reals' cameras"), (reals, "real images"))]
    side_by_side(panels).save(out / "fakes_vs_reals.png")


def one_view(G, count: int):
    """``count`` copies of the camera the single-view figures share: yaw 0.6, 0.3 rad above the horizon."""
    cam = G.cfg.camera
    return points([0.6] * count, math.pi / 2 - 0.3, cam.fov, cam.radius)


def class_ws(G: Generator, seeds: list[int], classes: list[int], psi: float) -> torch.Tensor:
    """ws [len(classes)·len(seeds), num_ws, w_dim]: every seed of each class in turn (truncated towards the
    class's mean w)."""
    return torch.cat([seeds_to_ws(G, seeds, truncation_psi=psi, class_index=k) for k in classes])


def figure_ws(G: Generator, classes: list[int], psi: float) -> torch.Tensor:
    """The latents of the per-object figures: ``SEEDS``, or seed 0 of each of ``classes``."""
    return class_ws(G, [0], classes, psi) if G.c_dim else seeds_to_ws(G, SEEDS, truncation_psi=psi)


@torch.no_grad()
def samples(G: Generator, out: Path, count: int = 32, per_class: int = 6) -> None:
    """Seeds at ψ = 1, all from ``one_view``: the variety G learnt (a row of seeds per class when conditional)."""
    if G.c_dim:
        ws = class_ws(G, list(range(per_class)), list(range(G.c_dim)), 1.0)
        title, cols = f"G_ema, seeds 0–{per_class - 1} of each class, a row per class, ψ = 1", per_class
    else:
        ws = seeds_to_ws(G, list(range(count)), truncation_psi=1.0)
        title, cols = f"G_ema, seeds 0–{count - 1}, ψ = 1, one camera", 8
    images = to_uint8(render_all(G, ws, one_view(G, len(ws))).image)
    labelled(zoom(image_grid(images, cols), 2), title).save(out / "samples.png")


@torch.no_grad()
def turntable(G: Generator, out: Path, frames: int = 36) -> None:
    """Four seeds, or seed 0 of every class, at ψ = 0.7 turning once around, tiled 4 wide."""
    cam = G.cfg.camera
    ws = figure_ws(G, list(range(G.c_dim)), 0.7)
    per_latent = np.stack([
        to_uint8(render_all(G, w[None].expand(frames, -1, -1), orbit(frames, cam.fov, cam.radius)).image)
        for w in ws])  # [latents, frames, H, W, 3]
    write_video((zoom(image_grid(per_latent[:, f], 4), 2) for f in range(frames)), out / "turntable.gif", fps=12)


@torch.no_grad()
def depth_and_normals(G: Generator, classes: list[int], out: Path) -> None:
    cam = G.cfg.camera
    ws = figure_ws(G, classes, 0.7)
    cameras = one_view(G, len(ws))
    rendered = render_all(G, ws, cameras)
    # As `epigraf generate --depth --normals` saves them (README, Depth maps): background black / mid-grey.
    depth = depth_to_uint8(rendered.depth, cam.ray_start, cam.ray_end, opacity=rendered.opacity)
    normal_rgb = normals_to_uint8(rendered.depth, cameras.fov, opacity=rendered.opacity)
    rows = np.concatenate([to_uint8(rendered.image), depth, normal_rgb], axis=2)  # [seeds, H, 3·W, 3]
    grid = image_grid(rows, 1)
    labelled(zoom(grid), "image | depth (near = white) | normals (camera space)").save(out / "depth_normals.png")


def rasterise(vertices: np.ndarray, faces: np.ndarray, yaw: float, pitch: float, colors: np.ndarray | None = None,
              extent: float | None = None, size: int = 256) -> np.ndarray:
    """A flat-shaded orthographic view of a mesh (painter's algorithm): vertex colours (default light grey) × a
    head light. ``extent``: the half-width shown, in world units (default: the mesh's own, plus 10 %)."""
    rot_y = np.array([[math.cos(yaw), 0, -math.sin(yaw)], [0, 1, 0], [math.sin(yaw), 0, math.cos(yaw)]])
    rot_x = np.array([[1, 0, 0], [0, math.cos(pitch), -math.sin(pitch)], [0, math.sin(pitch), math.cos(pitch)]])
    image = Image.new("RGB", (size, size), "white")
    if len(faces) == 0:
        return np.asarray(image)
    v = vertices @ (rot_x @ rot_y).T
    tri = v[faces]  # [F, 3, 3]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True) + 1e-12
    shade = 0.25 + 0.75 * np.abs(normals[:, 2])
    face_colors = colors[faces].mean(axis=1) if colors is not None else np.full((len(tri), 3), 200.0)
    extent = extent or np.abs(v[:, :2]).max() * 1.1 + 1e-9
    xy = (tri[:, :, :2] / extent * 0.5 + 0.5) * size
    xy[:, :, 1] = size - xy[:, :, 1]
    draw = ImageDraw.Draw(image)
    for f in np.argsort(tri[:, :, 2].mean(axis=1)):  # far (−z) first
        rgb = tuple(int(c) for c in (face_colors[f] * shade[f]).clip(0, 255))
        draw.polygon([tuple(p) for p in xy[f]], fill=rgb)
    return np.asarray(image)


@torch.no_grad()
def mesh_preview(G: Generator, classes: list[int], out: Path, resolution: int = 96) -> None:
    ws = figure_ws(G, classes, 0.7)
    views = ((0.6, 0.35), (2.2, 0.35), (-1.2, -0.5))
    rows = []
    for w in ws:
        mesh = extract_geometry(G, w[None], resolution=resolution).mesh
        rows.append(np.concatenate([rasterise(mesh.vertices, mesh.faces, yaw, pitch, mesh.colors)
                                    for yaw, pitch in views], axis=1))
    labelled(image_grid(np.stack(rows), 2), f"meshes at the automatic iso-level ({resolution}³ grid), three views"
             ).save(out / "mesh_preview.png")


@torch.no_grad()
def meshes_against_truth(G: Generator, data: Path, out: Path, size: int = 160) -> None:
    """Per class of the built-in data: its true mesh beside the mesh that the geometry metric scores (seed 0,
    ψ = 1, the protocol's grid and level), each from two views at one scale. → ``meshes_vs_truth.png``."""
    protocol = GeometryProtocol()
    model = GeneratorModel(G, protocol.truncation_psi)
    views = ((0.6, 0.35), (2.2, -0.3))
    tiles = []
    cam = G.cfg.camera
    for truth in load_builtin_truth(data, views_per_class=1):
        ours = protocol_mesh(model, truth, protocol).mesh
        extent = 1.1 * seen_radius(truth.fov, truth.radius, cam.ray_start, cam.ray_end)  # the scored ball
        row = [rasterise(m.vertices, m.faces, yaw, pitch, extent=extent, size=size)
               for m in (truth.mesh, ours) for yaw, pitch in views]
        tiles.append(np.asarray(labelled(np.concatenate(row, axis=1), truth.name)))
    labelled(image_grid(np.stack(tiles), 2), "true mesh (left pair) and G's (right pair) per class, as the "
             "geometry metric scores it").save(out / "meshes_vs_truth.png")


COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189))


def line_plot(series: dict[str, tuple[np.ndarray, np.ndarray]], title: str, path: Path,
              size: tuple[int, int] = (560, 320)) -> None:
    """Lines with markers of ``series`` (name → (kimg, values)) against kimg, one axis from 0, a legend when
    there are several."""
    legend = len(series) > 1
    w, h = size[0] + (130 if legend else 0), size[1]
    left, right, top, bottom = 60, 20 + (130 if legend else 0), 30, 40
    image = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(image)
    x_max = max(float(x.max()) for x, _ in series.values()) or 1.0
    hi = max(float(np.nanmax(y)) for _, y in series.values()) * 1.1 or 1.0
    draw.line([(left, top), (left, h - bottom), (w - right, h - bottom)], fill="black")
    for tick in np.linspace(0, hi, 5):
        ty = top + (1 - tick / hi) * (h - top - bottom)
        draw.line([(left - 4, ty), (left, ty)], fill="black")
        draw.text((4, ty - 7), f"{tick:.2f}", fill="black", font=font(12))
    for tick in np.linspace(0, x_max, 6):
        tx = left + tick / x_max * (w - left - right)
        draw.line([(tx, h - bottom), (tx, h - bottom + 4)], fill="black")
        draw.text((tx - 8, h - bottom + 6), f"{tick:.0f}", fill="black", font=font(11))
    for k, (name, (kimg, values)) in enumerate(series.items()):
        colour = COLOURS[k % len(COLOURS)]
        xy = [(left + x / x_max * (w - left - right), top + (1 - y / hi) * (h - top - bottom))
              for x, y in zip(kimg, values, strict=True) if np.isfinite(y)]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=2)
        for px, py in xy:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
        if legend:
            draw.text((w - right + 14, top + 4 + 16 * k), name, fill=colour, font=font(12))
    draw.text((left, 6), title, fill="black", font=font(14))
    draw.text((w // 2 - 20, h - 18), "kimg", fill="black", font=font(12))
    image.save(path)


def kid_plot(curve: dict, out: Path) -> None:
    line_plot({"KID": (np.asarray(curve["kimg"]), np.asarray(curve["kid"]))}, "KID (lower is better) against kimg",
              out / "kid_curve.png")


def geometry_plot(records: list[dict], out: Path) -> None:
    """The geometry metric's means over classes (``metric-geometry.jsonl`` of a run) against kimg."""
    kimg = np.array([r["kimg"] for r in records])
    means = [r["details"]["mean"] for r in records]
    # strict JSON stores a missing score (no surface) as null
    series = {label: (kimg, np.array([np.nan if m[key] is None else m[key] for m in means])) for label, key in (
        ("silhouette IoU", "silhouette_iou"), ("F@2 %", "fscore_2"), ("F@1 %", "fscore_1"),
        ("volume IoU", "volume_iou"), ("depth error", "depth_error"))}
    line_plot(series, "geometry against the true shapes (mean over classes)", out / "geometry_curve.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--network", type=Path, required=True)
    parser.add_argument("--kid-curve", type=Path, help="JSON from benchmarks/train_builtin.py --kid-curve")
    parser.add_argument("--geometry", type=Path,
                        help="a run's metric-geometry.jsonl (`epigraf train --geometry-ticks`)")
    parser.add_argument("--data", type=Path, help="the training images (default: the built-in dataset)")
    parser.add_argument("--out", type=Path, default=Path("docs/results"))
    parser.add_argument("--classes", type=lambda s: [int(k) for k in s.split(",")], default=[0, 1, 2, 3],
                        help="a class-conditional model's classes in the depth and mesh figures (default 0,1,2,3)")
    parser.add_argument("--ray-step-multiplier", type=int, default=DEFAULT_RAY_STEP_MULTIPLIER,
                        help="render with num_ray_steps × this, as `epigraf generate` (default %(default)s)")
    args = parser.parse_args()
    flush_denormals()
    args.out.mkdir(parents=True, exist_ok=True)
    G = with_ray_steps(load_checkpoint(args.network).G_ema.eval(), args.ray_step_multiplier)
    data = args.data or default_dir(G.cfg.image_resolution)
    dataset = ImageDataset(data, mirror=False)
    fakes_vs_reals(G, dataset, args.out)
    samples(G, args.out)
    turntable(G, args.out)
    depth_and_normals(G, args.classes, args.out)
    mesh_preview(G, args.classes, args.out)
    if (Path(data) / "geometry").is_dir():
        meshes_against_truth(G, Path(data), args.out)
    if args.kid_curve is not None:
        kid_plot(json.loads(args.kid_curve.read_text()), args.out)
    if args.geometry is not None:
        geometry_plot([json.loads(line) for line in args.geometry.read_text().splitlines() if line.strip()], args.out)
    print(f"figures in {args.out}")


if __name__ == "__main__":
    main()
