"""The viewer's rendering session: cached tri-planes, superseded requests dropped, frames as PNG/JPEG bytes.

Same render path as ``epigraf generate``: ``seeds_to_ws`` → ``with_ray_steps`` → ``G.synthesize(ws, "const")`` →
``G.render(..., deterministic=True)`` with the camera from ``epigraf.cameras.paths.points`` → ``to_uint8`` /
``depth_to_uint8`` / ``normals_to_uint8`` — so a frame equals the file ``epigraf generate`` writes for the same
seed, truncation, class, camera, resolution and ray-step multiplier.

Caching: the tri-planes of a latent (its ws and ``G.synthesize`` output) are computed once and kept in an LRU
cache of ``cache_size`` latents; orbiting, zooming, changing resolution, ray steps or view mode only re-renders.

Superseding: each page (client) numbers its frame requests. A request is dropped (``Superseded``) when a newer
one from the same client has arrived — before it starts or while it waits for the model — so at most one
render per client is ever behind the mouse; other clients (tabs) are unaffected.

Zoom rule: the renderer integrates each ray from ``ray_start`` to ``ray_end`` measured from the camera, fixed
by the model. At the model's radius r₀ that depth window brackets the object; moving the camera by Δ moves the
window by Δ through the object and clips its front or back (the window is already tighter than the tri-plane
cube, e.g. ±0.12 against ±0.2 for FFHQ), so the radius stays r₀ and zoom changes the field of view. Zooming in
is always valid (``ZOOM_IN``× at most, for usability); zooming out stops at the widest fov whose frustum, between
``ray_start`` and ``ray_end``, stays inside the sphere inscribed in the tri-plane cube (|p| ≤ cube_scale) at any
yaw and pitch — outside the cube the tri-planes hold no learned features — or at the model's own fov when that
is wider (FFHQ: 12° default, 12.3° widest; Megascans: 30°, 30.1°).
"""

from __future__ import annotations

import io
import math
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from epigraf.cameras.paths import points
from epigraf.config import CameraConfig
from epigraf.export.images import depth_to_uint8, normals_to_uint8, to_uint8
from epigraf.export.mesh import MESH_FORMATS, save_mesh
from epigraf.geometry import extract_geometry
from epigraf.inference import DEFAULT_RAY_STEP_MULTIPLIER, DEFAULT_TRUNCATION, with_ray_steps
from epigraf.nn.generator import Generator
from epigraf.process_settings import release_memory
from epigraf.seeds import seeds_to_ws
from epigraf.viewer.params import (
    DEFAULT_MESH_GRID,
    MAX_RAY_STEP_MULTIPLIER,
    MAX_SEED,
    MESH_GRID_RANGE,
    MIN_RESOLUTION,
    MODES,
    PSI_RANGE,
    FrameRequest,
    Latent,
    MeshRequest,
    ParameterError,
    Sequencing,
    ViewLimits,
)

DEFAULT_CACHE_SIZE = 8
DEFAULT_MAX_RESOLUTION = 1024
# Work a single request may ask for. Ray samples bound a frame's time and its per-chunk activations (1024² at
# the default 2 × 48 steps is 100 M; at × 8 steps, 400 M, minutes on a CPU); mesh grid points bound a mesh's
# field queries and its volume (512³ = 134 M points, > 8 GB).
MAX_FRAME_SAMPLES = 2**27
MAX_MESH_POINTS = 256**3
# A request whose work, at the speed measured on this machine's earlier requests, would take longer is refused.
DEFAULT_MAX_REQUEST_S = 60.0
ZOOM_IN = 8
# Clients whose newest sequence number is remembered; the oldest is forgotten first (tabs come and go).
MAX_CLIENTS = 1024
# PNG: fastest zlib level (frames are streamed; the pixels, not the file size, must match generate).
PNG_COMPRESS_LEVEL = 1
JPEG_QUALITY = 90
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg"}
_SUGGESTED_RESOLUTIONS = (32, 64, 128, 256, 512, 1024)


class Superseded(Exception):
    """A newer frame request of the same client arrived: this one is not worth rendering any more."""


def fov_range(camera: CameraConfig) -> tuple[float, float]:
    """(narrowest, widest) fov in degrees the viewer offers for this camera; the rule is the module docstring's.

    A sample at distance t along a ray at angle θ from the view axis lies at |p|² = r² + t² − 2rt·cos θ from the
    origin; |p| ≤ cube_scale for t in [ray_start, ray_end] (|p| is convex in t: the ends decide) bounds θ, and the
    image corner, at tan θ = √2·tan(fov/2), is the widest ray.
    """
    r, s = camera.radius, camera.cube_scale
    cos_min = max((r * r + t * t - s * s) / (2 * r * t) for t in (camera.ray_start, camera.ray_end))
    theta = math.acos(min(1.0, max(cos_min, 0.0)))  # the camera's own hemisphere: θ < 90°
    widest = math.degrees(2 * math.atan(math.tan(min(theta, math.radians(89))) / math.sqrt(2)))
    return camera.fov / ZOOM_IN, max(camera.fov, widest)


def scene_name(latent: Latent) -> str:
    """File stem of a latent's downloads: ``seed0005`` as ``epigraf generate``, or ``seed0005-0007_mix0.25``."""
    if latent.seed2 is None:
        return f"seed{latent.seed:04d}"
    return f"seed{latent.seed:04d}-{latent.seed2:04d}_mix{latent.mix:g}"


def encode_image(image: np.ndarray, image_format: str) -> bytes:
    """uint8 [H, W, 3] → PNG or JPEG bytes."""
    buf = io.BytesIO()
    if image_format == "png":
        Image.fromarray(image).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    else:
        Image.fromarray(image).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


@dataclass
class Frame:
    """An encoded frame and how it was made (render time excludes encoding; ``cache_hit``: tri-planes reused)."""

    data: bytes
    content_type: str
    render_ms: float
    cache_hit: bool


class Renderer:
    """One generator served to many pages: validated requests in, images and meshes out (thread-safe).

    Model work runs one request at a time under a lock (a CPU render already uses every core, a GPU one the
    whole device); image encoding runs outside it, so encoding one frame overlaps rendering the next.
    """

    def __init__(self, G: Generator, cache_size: int = DEFAULT_CACHE_SIZE,
                 max_resolution: int = DEFAULT_MAX_RESOLUTION, name: str = "", checkpoint: str | None = None,
                 max_request_s: float = DEFAULT_MAX_REQUEST_S) -> None:
        if cache_size < 1:
            raise ValueError(f"--cache-size must be ≥ 1, got {cache_size}")
        if max_resolution < MIN_RESOLUTION:
            raise ValueError(f"--max-resolution must be ≥ {MIN_RESOLUTION}, got {max_resolution}")
        self.G = G.eval()
        self.name, self.checkpoint, self.cache_size = name, checkpoint, cache_size
        self.device = next(G.parameters()).device
        fov_min, fov_max = fov_range(G.cfg.camera)
        self.limits = ViewLimits(
            c_dim=G.c_dim, fov=G.cfg.camera.fov, fov_min=fov_min, fov_max=fov_max,
            resolution=min(G.cfg.image_resolution, max_resolution), max_resolution=max_resolution,
            truncation=DEFAULT_TRUNCATION, ray_step_multiplier=DEFAULT_RAY_STEP_MULTIPLIER,
        )
        self._model_lock = threading.Lock()
        self._seq_lock = threading.Lock()
        self._newest: OrderedDict[str, int] = OrderedDict()
        self._scenes: OrderedDict[Latent, tuple[Tensor, Tensor]] = OrderedDict()
        self._counts = {"frames": 0, "superseded": 0, "cache_hits": 0, "cache_misses": 0, "meshes": 0}
        self.max_request_s = max_request_s
        self._work_per_s: dict[str, float] = {}  # frame samples / mesh points per second, measured

    # ------------------------------------------------------------------------------------------- info

    def info(self) -> dict[str, Any]:
        """What the page needs to build its controls: model, camera, ranges and defaults."""
        cam, lim = self.G.cfg.camera, self.limits
        resolutions = sorted({r for r in _SUGGESTED_RESOLUTIONS if r <= lim.max_resolution} | {lim.resolution})
        return {
            "name": self.name, "checkpoint": self.checkpoint, "device": str(self.device),
            "image_resolution": self.G.cfg.image_resolution, "resolution": lim.resolution,
            "resolutions": resolutions, "min_resolution": MIN_RESOLUTION, "max_resolution": lim.max_resolution,
            "c_dim": self.G.c_dim, "z_dim": self.G.z_dim, "max_seed": MAX_SEED,
            "yaw": 0.0, "pitch": math.pi / 2, "fov": lim.fov, "fov_min": lim.fov_min, "fov_max": lim.fov_max,
            "radius": cam.radius, "ray_start": cam.ray_start, "ray_end": cam.ray_end, "cube_scale": cam.cube_scale,
            "truncation": lim.truncation, "psi_range": list(PSI_RANGE),
            "ray_step_multiplier": lim.ray_step_multiplier, "max_ray_step_multiplier": MAX_RAY_STEP_MULTIPLIER,
            "num_ray_steps": self.G.cfg.render.num_ray_steps, "modes": list(MODES), "cache_size": self.cache_size,
            "mesh_formats": list(MESH_FORMATS), "mesh_grid": DEFAULT_MESH_GRID,
            "mesh_grid_range": list(MESH_GRID_RANGE),
        }

    def stats(self) -> dict[str, int]:
        """Counters since start: frames rendered, requests superseded, tri-plane cache hits/misses, meshes."""
        with self._seq_lock:
            return dict(self._counts, cached_latents=len(self._scenes))

    # ------------------------------------------------------------------------------------------- frames

    # ------------------------------------------------------------------------------------------- work bounds

    def frame_samples(self, req: FrameRequest) -> int:
        return req.resolution**2 * self.G.cfg.render.num_ray_steps * req.ray_steps

    def _check_work(self, kind: str, amount: int, limit: int, unit: str, hint: str) -> None:
        """Raise ParameterError (a 400) when a request's work is over ``limit`` or, at the speed measured on this
        machine, would take longer than ``max_request_s``."""
        if amount > limit:
            raise ParameterError(f"this {kind} needs {amount:,} {unit}, over the {limit:,} a request may ask for; "
                                 f"{hint}")
        rate = self._work_per_s.get(kind)
        if rate is not None and amount / rate > self.max_request_s:
            raise ParameterError(f"this {kind} would take ~{amount / rate:.0f} s on this machine, over the "
                                 f"{self.max_request_s:.0f} s a request may take; {hint}")

    def _measured(self, kind: str, amount: int, seconds: float) -> None:
        rate = amount / max(seconds, 1e-6)
        old = self._work_per_s.get(kind)
        self._work_per_s[kind] = rate if old is None else 0.7 * old + 0.3 * rate

    def frame(self, req: FrameRequest, seqn: Sequencing | None = None,
              client_gone: Callable[[], bool] | None = None) -> Frame:
        """Render and encode one view; raises Superseded when a newer request of the same client exists or
        ``client_gone()`` says its connection closed while it waited, and ParameterError when it is too much work."""
        samples = self.frame_samples(req)
        self._check_work("frame", samples, MAX_FRAME_SAMPLES, "ray samples", "lower res or steps")
        seqn = seqn or Sequencing()
        self._announce(seqn)
        with self._model_lock:
            self._check_newest(seqn)
            if client_gone is not None and client_gone():
                with self._seq_lock:
                    self._counts["superseded"] += 1
                raise Superseded("the page closed the connection before its frame was rendered")
            t0 = time.perf_counter()
            image, hit = self.render(req)
            render_ms = (time.perf_counter() - t0) * 1000
            if hit:  # a miss also synthesises tri-planes: not the rate of rendering
                self._measured("frame", samples, render_ms / 1000)
        return Frame(encode_image(image, req.image_format), CONTENT_TYPES[req.image_format], render_ms, hit)

    def render(self, req: FrameRequest) -> tuple[np.ndarray, bool]:
        """The view as uint8 [H, W, 3] (RGB, depth or normals as ``epigraf generate`` saves them) and whether the
        tri-planes came from the cache. Not locked: ``frame`` holds the model lock around it."""
        with torch.no_grad():
            ws, planes, hit = self._scene(req.latent)
            G = with_ray_steps(self.G, req.ray_steps)
            cam = G.cfg.camera
            cameras = points([req.yaw], req.pitch, req.fov, cam.radius)
            out = G.render(planes, cameras.to(self.device), resolution=req.resolution, deterministic=True, ws=ws)
            if req.mode == "depth":
                image = depth_to_uint8(out.depth, cam.ray_start, cam.ray_end, opacity=out.opacity)
            elif req.mode == "normals":
                image = normals_to_uint8(out.depth, cameras.fov, opacity=out.opacity)
            else:
                image = to_uint8(out.image)
        with self._seq_lock:
            self._counts["frames"] += 1
        return image[0], hit

    def _scene(self, latent: Latent) -> tuple[Tensor, Tensor, bool]:
        """(ws [1, num_ws, w_dim], tri-planes [1, C, R, R], cache hit) of a latent, LRU-cached."""
        hit = latent in self._scenes
        if hit:
            self._scenes.move_to_end(latent)
        else:
            ws = self._ws(latent)
            self._scenes[latent] = (ws, self.G.synthesize(ws, noise_mode="const"))
            while len(self._scenes) > self.cache_size:
                self._scenes.popitem(last=False)
        with self._seq_lock:
            self._counts["cache_hits" if hit else "cache_misses"] += 1
        return (*self._scenes[latent], hit)

    def _ws(self, latent: Latent) -> Tensor:
        # One seed per seeds_to_ws call, as `epigraf generate --seeds N` makes it: a batch of two could differ
        # in the last bits (batched matrix products), and a mix of 0 must equal the generated image exactly.
        ws = seeds_to_ws(self.G, [latent.seed], latent.psi, latent.class_index)
        if latent.seed2 is None:
            return ws
        return ws.lerp(seeds_to_ws(self.G, [latent.seed2], latent.psi, latent.class_index), latent.mix)

    def _announce(self, seqn: Sequencing) -> None:
        if seqn.client is None:
            return
        with self._seq_lock:
            newest = self._newest.get(seqn.client)
            if newest is not None and seqn.seq < newest:
                self._counts["superseded"] += 1
                raise Superseded(f"request {seqn.seq} arrived after request {newest} of the same page")
            self._newest[seqn.client] = seqn.seq
            self._newest.move_to_end(seqn.client)
            while len(self._newest) > MAX_CLIENTS:
                self._newest.popitem(last=False)

    def _check_newest(self, seqn: Sequencing) -> None:
        if seqn.client is None:
            return
        with self._seq_lock:
            newest = self._newest.get(seqn.client, seqn.seq)
            if newest > seqn.seq:
                self._counts["superseded"] += 1
                raise Superseded(f"request {seqn.seq} superseded by request {newest} of the same page")

    # ------------------------------------------------------------------------------------------- meshes

    def mesh(self, req: MeshRequest) -> tuple[bytes, str]:
        """A coloured mesh file of the latent (as ``epigraf mesh``, tri-plane cube, automatic level unless given)
        → (bytes, file name)."""
        points = req.grid**3
        self._check_work("mesh", points, MAX_MESH_POINTS, "grid points", "lower grid")
        with self._model_lock, torch.no_grad():
            ws, _, _ = self._scene(req.latent)
            t0 = time.perf_counter()
            try:
                geo = extract_geometry(self.G, ws, req.grid, level=req.level)
            finally:
                release_memory()  # a mesh's volume and field queries are the viewer's largest allocations
            self._measured("mesh", points, time.perf_counter() - t0)
        if len(geo.mesh.faces) == 0:
            raise ValueError(f"no surface at level {geo.level:.4g}: try another level")
        name = f"{scene_name(req.latent)}.{req.mesh_format}"
        with tempfile.TemporaryDirectory() as tmp:
            data = save_mesh(geo.mesh, Path(tmp) / name).read_bytes()
        with self._seq_lock:
            self._counts["meshes"] += 1
        return data, name
