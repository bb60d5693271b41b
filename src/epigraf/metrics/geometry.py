"""The geometry metric: a model's shapes against the built-in dataset's true ones (``epigraf metrics --metrics
geometry``; ``epigraf train --geometry-ticks N``).

The built-in dataset stores every view's true depth and coverage (``epigraf.data.builtin.load_geometry``) and
names each toy's mesh and placement in its manifest, so a model's geometry can be measured against the truth,
per class of a class-conditional model (or for an unconditional model on a one-object subset).

Protocol (``GeometryProtocol``; fixed, the same at every point of a run and for every model):

* **Views.** The first ``views_per_class`` (8) views of each class, by image key, at the dataset's own cameras,
  labels and resolution. View i is rendered from latent seed i (z = ``RandomState(i).randn``), ψ = 1, constant
  StyleGAN noise, deterministic ray sampling with the model's ray steps × 2 (``epigraf generate``'s inference
  setting), foreground only.
* **Depth error.** G's expected depth given a hit, Σw·t / Σw where the opacity Σw ≥ 0.5
  (``epigraf.render.depth.surface_depth``, what the depth maps show), against the true depth where the true
  coverage ≥ 0.5, over the union of the two silhouettes; a pixel that only
  one of them covers takes the far end of the ray interval for the other. Reported: the median |Δdepth| as a
  fraction of the ray interval (far − near), pooled over the class's views, and the same median over the pixels
  both cover (``depth_error_hits``, the error of the surface alone) with its signed counterpart
  (``depth_bias_hits``, > 0: G's surface lies behind the true one).
* **Silhouette IoU.** |true ∩ G| / |true ∪ G| of the two silhouettes above, pooled over the views.
* **The scene.** The ball every dataset camera sees whole, inside its ray interval and its image: radius
  r = min(far − radius, radius − near, radius · sin(fov/2)) (0.25 for the built-in preset; the dataset scales
  each toy to 0.9 r, ``data.builtin.object_radius``). The *scene extent* is its diameter 2r. A point beyond r
  is seen only by the cameras that look at it from the side, near the borders of their images (for the built-in
  preset up to 0.38 from the origin at the image edges, 0.47 at the corners; the tri-plane cube's corners lie at
  0.82), so G's density there is barely constrained by the views; the mesh measurement leaves it out: its grid
  is the cube of side 2r and G's density outside the ball counts as empty. (Density there that shows in the
  protocol's views still counts against the depth error and the silhouette IoU.)
* **Mesh accuracy.** G's mesh for seed 0 (ψ = 1) made as ``epigraf mesh --seeds 0 --truncation 1 --cube-size
  0.5 --resolution 128`` makes it, but with the density outside the ball emptied: the raw density on a 128³ grid
  over the scene's cube, the automatic iso-level (``epigraf.geometry.auto_level``, the same rule), marching cubes.
  Against the toy's true mesh in the world frame, 100,000 points sampled uniformly on each surface (numpy seed
  0; far fewer lie so sparsely that even a perfect mesh's samples miss the 1 % threshold, docs/results.md): the
  Chamfer distance (mean of the two mean nearest-neighbour distances) and the F-score at 1 % and 2 % of the
  scene extent (0.005 and 0.01 world units for the built-in preset), both in units of the scene extent; and
  the volume IoU of G's inside (raw density above the level) and the true inside (``shapes.occupancy_grid``) at
  the same 128³ grid points.

``GeometryModel`` is what is measured: for a label and seeds, a batched field points → (rgb, raw density) plus
the camera and render configs. ``GeneratorModel`` wraps a generator; ``FieldModel`` wraps fixed fields (the
sanity tests plug in a density field built from the true mesh, which scores near perfect, and one of a sphere,
which scores clearly worse). Both go through the same renderer, grid and iso-surface code.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from epigraf.cameras import Cameras
from epigraf.cameras.rays import pixel_grid, world_rays
from epigraf.config import CameraConfig, RenderConfig
from epigraf.geometry import auto_level, sample_grid
from epigraf.isosurface import extract_isosurface
from epigraf.metrics.builtin_truth import DEFAULT_VIEWS, ClassTruth, load_builtin_truth, seen_radius
from epigraf.metrics.evaluate import MetricResult
from epigraf.metrics.shapes import TriangleMesh, nearest_distances, sample_surface
from epigraf.nn.field import split_planes
from epigraf.nn.generator import Generator
from epigraf.render.depth import surface_depth
from epigraf.render.volume import RaySamplingOptions, render_rays_chunked
from epigraf.seeds import seeds_to_ws

__all__ = [
    "ClassGeometry",
    "FieldModel",
    "GeneratorModel",
    "GeometryModel",
    "GeometryProtocol",
    "GeometryResult",
    "evaluate_geometry",
    "format_geometry_table",
    "geometry_metric",
    "render_views",
    "training_evaluator",
    "view_scores",
    "yaw_alignment",
]

log = logging.getLogger(__name__)

# points [B, N, 3] → [B, N, 4] (rgb, raw density), B scenes (latents) at once.
BatchField = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class GeometryProtocol:
    """The metric's fixed settings (module docstring). Change none of them within a comparison."""

    views_per_class: int = DEFAULT_VIEWS
    truncation_psi: float = 1.0
    ray_step_multiplier: int = 2
    grid_resolution: int = 128
    surface_samples: int = 100_000
    fscore_thresholds: tuple[float, ...] = (0.01, 0.02)
    hit_opacity: float = 0.5
    mask_threshold: float = 0.5
    mesh_seed: int = 0
    sample_seed: int = 0

    def describe(self) -> str:
        f = ", ".join(f"{100 * t:g} %" for t in self.fscore_thresholds)
        return (f"geometry: first {self.views_per_class} views per class at the dataset's cameras and labels, "
                f"view i from seed i, ψ={self.truncation_psi:g}, const noise, deterministic rendering with ray "
                f"steps ×{self.ray_step_multiplier}; depth = Σw·t/Σw where Σw ≥ {self.hit_opacity:g} vs the true "
                f"depth where coverage ≥ {self.mask_threshold:g}, median |Δ| / (far − near) over the union of "
                f"silhouettes (a miss counts as the far end), silhouette IoU; mesh of seed {self.mesh_seed} at "
                f"the automatic iso-level on a {self.grid_resolution}³ grid over the cube around the ball all "
                f"cameras see (density outside it empty; its diameter is the scene extent), "
                f"{self.surface_samples} surface samples per mesh (seed {self.sample_seed}), Chamfer and F-score at "
                f"{f} of the scene extent, volume IoU at the grid points")


# The protocol as documented; any other settings make a result non-standard (said so in its protocol string).
STANDARD_PROTOCOL = GeometryProtocol()


# Raw density given to grid points outside the seen ball: σ = 0 under either activation and any small shift.
EMPTY_RAW_DENSITY = -1e4


# Models ---------------------------------------------------------------------------------------------------


class GeometryModel(Protocol):
    """What the metric measures. ``scenes(label, seeds)`` → one batched field over len(seeds) scenes."""

    camera: CameraConfig
    render: RenderConfig
    device: torch.device

    def scenes(self, label: int | None, seeds: Sequence[int]) -> BatchField: ...


class GeneratorModel:
    """A generator's scenes: latents from seeds (``epigraf.latents.seeds_to_ws``), tri-planes with the constant
    noise, the tri-plane field."""

    def __init__(self, G: Generator, truncation_psi: float = 1.0) -> None:
        self.G, self.truncation_psi = G, truncation_psi
        self.camera, self.render = G.cfg.camera, G.cfg.render
        self.device = next(G.parameters()).device

    @torch.no_grad()
    def scenes(self, label: int | None, seeds: Sequence[int]) -> BatchField:
        ws = seeds_to_ws(self.G, list(seeds), self.truncation_psi, class_index=label)
        feats = split_planes(self.G.synthesize(ws, noise_mode="const"), self.G.cfg.triplane_channels)
        return lambda points: self.G.field(feats, points)


class FieldModel:
    """Fixed fields, one per label (None: an unconditional model), the same for every seed.

    fields: label → field, points [..., 3] → [..., 4] (rgb, raw density), any leading shape.
    """

    def __init__(self, fields: Mapping[int | None, Callable[[Tensor], Tensor]], camera: CameraConfig,
                 render: RenderConfig) -> None:
        self.fields, self.camera, self.render = dict(fields), camera, render
        self.device = torch.device("cpu")

    def scenes(self, label: int | None, seeds: Sequence[int]) -> BatchField:
        if label not in self.fields:
            raise ValueError(f"no field for label {label}")
        return self.fields[label]


# Measuring ------------------------------------------------------------------------------------------------


def _ray_options(model: GeometryModel, protocol: GeometryProtocol) -> RaySamplingOptions:
    """The model's own rendering (as ``Generator.render``), deterministic, with the protocol's ray steps."""
    r, cam = model.render, model.camera
    return RaySamplingOptions(
        num_steps=r.num_ray_steps * protocol.ray_step_multiplier, near=cam.ray_start, far=cam.ray_end,
        deterministic=True, density_shift=r.density_shift, clamp_mode=r.clamp_mode, white_back=r.white_back,
        last_back=r.last_back, open_far_end=r.background is not None or r.open_far_end)


@torch.no_grad()
def render_views(model: GeometryModel, label: int | None, seeds: Sequence[int], cameras: Cameras, resolution: int,
                 protocol: GeometryProtocol = GeometryProtocol()) -> tuple[Tensor, Tensor, Tensor]:
    """Render scene i (seed i) from camera i (V cameras) → image [V, 3, R, R] (the foreground on the model's
    white or black back), depth Σw·t and opacity Σw, each [V, R, R]; on the CPU. The ray interval is the model's."""
    origins, directions = world_rays(cameras.to(model.device),
                                     pixel_grid(resolution, resolution, device=model.device)[None])
    scenes = model.scenes(label, seeds)

    def field(points: Tensor) -> Tensor:  # [B, P, S, 3] → [B, P, S, 4]
        return scenes(points.reshape(points.shape[0], -1, 3)).reshape(*points.shape[:-1], 4)

    rays = render_rays_chunked(field, origins, directions, _ray_options(model, protocol), model.render.chunk_rays)
    shape = (len(seeds), resolution, resolution)
    image = rays.color.transpose(1, 2).reshape(len(seeds), -1, resolution, resolution)
    return image.cpu(), rays.depth.reshape(shape).cpu(), rays.opacity.reshape(shape).cpu()


def depth_scores(depth_sum: Tensor, opacity: Tensor, true_depth: Tensor, true_mask: Tensor, near: float,
                 far: float, protocol: GeometryProtocol = GeometryProtocol()) -> dict[str, float]:
    """Depth error and silhouette IoU (module docstring) of renders against the truth, all [V, R, R]."""
    expected, hit = surface_depth(depth_sum, opacity, protocol.hit_opacity)
    true_hit = true_mask >= protocol.mask_threshold
    union, both = hit | true_hit, hit & true_hit
    ours = torch.where(hit, expected, torch.tensor(far))
    theirs = torch.where(true_hit, true_depth, torch.tensor(far))
    error = ((ours - theirs).abs() / (far - near)).clamp(max=1.0)

    def median(x: Tensor) -> float:
        return float(x.median()) if x.numel() else math.nan

    signed = (ours - theirs) / (far - near)
    return {"depth_error": median(error[union]), "depth_error_hits": median(error[both]),
            "depth_bias_hits": median(signed[both]),
            "silhouette_iou": float(both.sum() / union.sum()) if union.any() else math.nan}


def view_scores(model: GeometryModel, truth: ClassTruth, protocol: GeometryProtocol = GeometryProtocol(),
                yaw: float = 0.0) -> dict[str, float]:
    """``depth_scores`` of the model's renders of ``truth``'s views (view i from seed i), every camera's yaw offset
    by ``yaw`` radians (0: the protocol's own cameras)."""
    angles = truth.angles.clone()
    angles[:, 0] += yaw
    cameras = Cameras.from_angles(angles, truth.fov, truth.radius)
    seeds = list(range(len(truth.keys)))
    _, depth_sum, opacity = render_views(model, truth.label, seeds, cameras, truth.depth.shape[-1], protocol)
    return depth_scores(depth_sum, opacity, truth.depth, truth.mask, model.camera.ray_start, model.camera.ray_end,
                        protocol)


def yaw_alignment(model: GeometryModel, truth: ClassTruth, yaws: Sequence[float],
                  protocol: GeometryProtocol = GeometryProtocol()) -> list[dict[str, float]]:
    """``view_scores`` of the model turned about the world's up axis by each of ``yaws`` (radians), in order.

    Adding φ to every camera's yaw shows the model as if it were turned by −φ. Cameras spread uniformly in yaw,
    seen by a D that is not told the camera, leave such a turn unidentified: the turned toy's views are the true
    toy's, each from another camera. The scores at the best yaw measure the shape apart from that turn."""
    return [view_scores(model, truth, protocol, yaw) for yaw in yaws]


@dataclass
class ProtocolMesh:
    """A model's mesh under the protocol: the iso-surface (world units; no faces when nothing is half opaque), the
    grid points above the level ([res, res, res] bool, None without a surface), the level (nan without) and the
    grid's axis (world units, the same on x, y and z)."""

    mesh: TriangleMesh
    inside: np.ndarray | None
    level: float
    axis: np.ndarray


def protocol_mesh(model: GeometryModel, truth: ClassTruth,
                  protocol: GeometryProtocol = GeometryProtocol()) -> ProtocolMesh:
    """The mesh of ``protocol.mesh_seed`` of ``truth``'s class that ``mesh_scores`` measures: the raw density on
    the protocol's grid over the ball every camera sees, emptied outside it, at the automatic level."""
    ball = seen_radius(truth.fov, truth.radius, model.camera.ray_start, model.camera.ray_end)
    extent, res = 2 * ball, protocol.grid_resolution
    scenes = model.scenes(truth.label, [protocol.mesh_seed])
    volume = sample_grid(lambda p: scenes(p[None])[0, :, 3:], res, extent, model.device)[..., 0]
    spacing = extent / (res - 1)
    axis = np.linspace(-extent / 2, extent / 2, res)
    outside = torch.from_numpy(np.linalg.norm(np.stack(np.meshgrid(axis, axis, axis, indexing="ij")), axis=0) > ball)
    volume = volume.masked_fill(outside, EMPTY_RAW_DENSITY)
    try:
        level = auto_level(volume, spacing, model.render.clamp_mode, model.render.density_shift)
        iso = extract_isosurface(volume.numpy(), level, spacing, (-extent / 2,) * 3)
        return ProtocolMesh(TriangleMesh(iso.vertices.astype(np.float64), iso.faces), volume.numpy() > level,
                            level, axis)
    except ValueError as err:  # no ray becomes half opaque, or the level leaves no surface
        log.info("%s: no surface (%s)", truth.name, err)
        return ProtocolMesh(TriangleMesh(np.zeros((0, 3)), np.zeros((0, 3), np.int64)), None, math.nan, axis)


def mesh_scores(model: GeometryModel, truth: ClassTruth,
                protocol: GeometryProtocol = GeometryProtocol()) -> dict[str, float]:
    """Chamfer, F-scores and volume IoU of the model's mesh of ``protocol.mesh_seed`` (``protocol_mesh``) against
    the true mesh, in the ball every camera sees (module docstring)."""
    found = protocol_mesh(model, truth, protocol)
    mesh, inside, level, axis = found.mesh, found.inside, found.level, found.axis
    extent = float(axis[-1] - axis[0])
    true_inside = truth.occupancy(axis)
    if inside is None:
        volume_iou = 0.0
    else:
        volume_iou = float((inside & true_inside).sum() / max(1, (inside | true_inside).sum()))
    ours = sample_surface(mesh, protocol.surface_samples, protocol.sample_seed)
    theirs = truth.surface_samples(protocol.surface_samples, protocol.sample_seed)
    to_true, to_ours = nearest_distances(ours, theirs), nearest_distances(theirs, ours)
    scores = {"chamfer": float((to_true.mean() + to_ours.mean()) / 2 / extent) if len(ours) else math.nan}
    for t in protocol.fscore_thresholds:
        precision = float((to_true < t * extent).mean()) if len(ours) else 0.0
        recall = float((to_ours < t * extent).mean())
        scores[f"fscore_{100 * t:g}"] = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {**scores, "volume_iou": volume_iou, "level": level, "mesh_faces": int(len(mesh.faces))}


@dataclass
class ClassGeometry:
    """One class's scores (``GeometryProtocol``)."""

    name: str
    label: int | None
    views: int
    scores: dict[str, float]


@dataclass
class GeometryResult:
    """Per-class scores and their means over the classes."""

    classes: list[ClassGeometry]
    protocol: GeometryProtocol
    seconds: float = 0.0

    @property
    def mean(self) -> dict[str, float]:
        keys = [k for k in self.classes[0].scores if k not in ("level", "mesh_faces")]
        def mean(values: list[float]) -> float:  # over the classes that have a value (NaN: no surface)
            finite = [v for v in values if math.isfinite(v)]
            return float(np.mean(finite)) if finite else math.nan

        return {k: mean([c.scores[k] for c in self.classes]) for k in keys}

    def to_metric_result(self) -> MetricResult:
        """As a ``MetricResult`` named "geometry": value = the mean F-score at the largest threshold; details
        hold every class's scores, the means and the protocol's settings."""
        mean = self.mean
        headline = f"fscore_{100 * max(self.protocol.fscore_thresholds):g}"
        details = {"mean": mean, "classes": [asdict(c) for c in self.classes],
                   "settings": asdict(self.protocol), "headline": headline}
        views = sum(c.views for c in self.classes)
        if self.protocol != STANDARD_PROTOCOL:
            note = " (non-standard settings)"
        elif any(c.views < self.protocol.views_per_class for c in self.classes):
            note = " (non-standard: fewer views than the protocol's)"
        else:
            note = ""
        protocol = self.protocol.describe() + note
        return MetricResult("geometry", "dataset", mean[headline], views, views + len(self.classes), protocol,
                            details, self.seconds)

    def table(self) -> str:
        """A plain-text table: a row per class and the mean."""
        return format_geometry_table(self.to_metric_result().details)


def format_geometry_table(details: dict[str, Any]) -> str:
    """The per-class table of a geometry ``MetricResult``'s details: a row per class, then the mean."""
    ts = [f"fscore_{100 * t:g}" for t in details["settings"]["fscore_thresholds"]]
    cols = ["depth_error", "depth_error_hits", "silhouette_iou", "chamfer", *ts, "volume_iou"]
    heads = ["class", "depth err", "(hits)", "sil. IoU", "Chamfer", *[f"F@{t[7:]}%" for t in ts], "vol. IoU",
             "level"]
    rows = [heads]
    for c in details["classes"]:
        rows.append([c["name"], *[f"{c['scores'][k]:.4f}" for k in cols], f"{c['scores']['level']:.4g}"])
    rows.append(["mean", *[f"{details['mean'][k]:.4f}" for k in cols], ""])
    widths = [max(len(r[i]) for r in rows) for i in range(len(heads))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def evaluate_geometry(model: GeometryModel, truths: Sequence[ClassTruth],
                      protocol: GeometryProtocol = GeometryProtocol(), progress: bool = False) -> GeometryResult:
    """Every class's depth, silhouette and mesh scores (module docstring)."""
    t0 = time.perf_counter()
    results = []
    for truth in tqdm(truths, desc="geometry", unit="class", disable=not progress, dynamic_ncols=True):
        scores = view_scores(model, truth, protocol)
        scores.update(mesh_scores(model, truth, protocol))
        results.append(ClassGeometry(truth.name, truth.label, len(truth.keys), scores))
    return GeometryResult(results, protocol, time.perf_counter() - t0)


def check_model_fits(G: Generator, truths: Sequence[ClassTruth]) -> None:
    """ValueError unless a conditional G is measured on labelled classes and an unconditional one on one object."""
    labelled = truths[0].label is not None
    if G.c_dim and not labelled:
        raise ValueError("a class-conditional model needs a labelled built-in dataset (e.g. the toys)")
    if labelled and G.c_dim == 0:
        raise ValueError("an unconditional model is measured on a one-object built-in dataset (--num-objects 1)")
    if labelled and max(t.label for t in truths) >= G.c_dim:
        raise ValueError(f"the model has {G.c_dim} classes but the dataset's labels reach "
                         f"{max(t.label for t in truths)}")


def geometry_metric(G: Generator, data: str | Path, protocol: GeometryProtocol = GeometryProtocol(),
                    classes: Sequence[int] | None = None, truths: Sequence[ClassTruth] | None = None,
                    progress: bool = False) -> MetricResult:
    """The geometry metric of G (G_ema) on a built-in dataset folder, as a ``MetricResult``.

    truths: from ``load_builtin_truth`` (pass them to reuse their cached grids across calls, as training does).
    """
    truths = load_builtin_truth(data, protocol.views_per_class, classes) if truths is None else truths
    check_model_fits(G, truths)
    was_training = G.training
    G.eval()
    try:
        result = evaluate_geometry(GeneratorModel(G, protocol.truncation_psi), truths, protocol, progress)
    finally:
        G.train(was_training)
    return result.to_metric_result()


def training_evaluator(data: str | Path, G: Generator,
                       protocol: GeometryProtocol = GeometryProtocol()) -> Callable[[Generator], MetricResult] | None:
    """``epigraf train --geometry-ticks``: a function G_ema → the geometry ``MetricResult``, with the truth loaded
    once (its grids and samples are kept between calls); None, logged, when ``data`` has no true geometry or
    does not fit the model (e.g. an unconditional model on the twelve toys)."""
    try:
        truths = load_builtin_truth(data, protocol.views_per_class)
        check_model_fits(G, truths)
    except (ValueError, ImportError, OSError) as err:
        log.warning("the geometry metric during training is off: %s", err)
        return None
    return lambda G_ema: geometry_metric(G_ema, data, protocol, truths=truths)
