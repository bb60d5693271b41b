"""3D-consistency metric: reproject one rendered view into another and compare colours.

For a view A (image, depth, opacity, camera) and a view B of the same scene:

1. back-project every pixel of A to the world point o_A + depth_A · d_A on its own ray (our pixel grid
   and OpenGL camera convention, ``epigraf.cameras.rays``; depth is the distance along the unit ray, divided by
   the opacity when one is given, i.e. the expected distance of the rays that terminate);
2. project that point into B with ``project_points`` (pinhole, B's cam2world and fov) and read B's colour,
   depth and opacity there (bilinear, align-corners, i.e. the grid x_j = −1 + 2j/(w−1),
   y_i = 1 − 2i/(h−1));
3. a pixel is *valid* when A is opaque there (opacity ≥ ``opacity_threshold``, 0.9 by default, which
   leaves out silhouette pixels whose colour mixes surface and background) and not at the far end
   of the frustum (depth_A < far − tolerance: without a background model the original renders an opaque
   backdrop there, which is not a surface), the point lies in front of B and inside its image, B is opaque
   there, and B sees this very point: |‖p − o_B‖ − depth_B| ≤ ``depth_tolerance`` for B's depth read
   both bilinearly and at the nearest pixel (otherwise it is occluded in B, B's surface is elsewhere, or
   the point sits on a silhouette);
4. over valid pixels: mean absolute colour error (colours mapped to [0, 1], averaged over channels) and
   PSNR (peak 1, from the pooled squared error); also the valid fraction of A's pixels.

A renderer that is 3D-consistent by construction (EpiGRAF renders every pixel from one radiance field)
scores ≈ 0 up to the error of the expected depth; a 2D upsampler that invents view-dependent detail
scores clearly worse.

Protocol of ``consistency_metric`` (the ``consistency`` metric of ``epigraf metrics``): ``num_latents``
latents (default 64), ψ = 1 unless asked, const StyleGAN noise and deterministic rendering (so that
stochastic ray sampling does not count as inconsistency); per latent a base pose A from the dataset or
the configured distribution (``sampling.CAMERA_MODES``), pitch kept, and two partner views B± at yaw
± ``yaw_offset`` (0.2 rad); both pairs A→B₊ and A→B₋ are scored with the tri-planes of one latent (with
pose conditioning, conditioned on A). Default depth tolerance: 2 % of the ray interval (far − near).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from epigraf.cameras import Cameras, checked_angles
from epigraf.cameras.rays import pixel_grid, world_rays
from epigraf.metrics.sampling import MetricDataset, sample_conditions
from epigraf.nn.generator import Generator
from epigraf.progress import track

__all__ = [
    "ConsistencyResult",
    "Reprojection",
    "ReprojectionStats",
    "View",
    "backproject",
    "consistency_metric",
    "default_depth_tolerance",
    "project_points",
    "reproject",
]


@dataclass
class View:
    """One rendered view: image [B, 3, H, W] in [−1, 1], depth [B, 1, H, W] (distance along the unit ray),
    opacity [B, 1, H, W] (Σ w; None = fully opaque) and the B cameras that rendered it."""

    image: Tensor
    depth: Tensor
    cameras: Cameras
    opacity: Tensor | None = None


def default_depth_tolerance(near: float, far: float) -> float:
    """2 % of the ray interval."""
    return 0.02 * (far - near)


def project_points(points: Tensor, cameras: Cameras) -> tuple[Tensor, Tensor, Tensor]:
    """Project world points into look-at-origin pinhole cameras.

    points [B, P, 3] → (xy [B, P, 2] camera-plane coordinates in the pixel-grid convention of
    ``epigraf.cameras.rays`` (±1 = centres of the border pixels, +y = up), distance [B, P] from the camera centre,
    in_front [B, P] bool). Inverse of the ray construction: a point on the ray of grid position (x, y)
    projects back to (x, y).
    """
    if points.ndim != 3 or points.shape[-1] != 3 or points.shape[0] != cameras.batch_size:
        raise ValueError(f"points must be [{cameras.batch_size}, P, 3], got {list(points.shape)}")
    safe = Cameras(checked_angles(cameras.angles), cameras.fov, cameras.radius)
    cam2world = safe.cam2world().to(device=points.device, dtype=points.dtype)
    rotation, origin = cam2world[:, :3, :3], cam2world[:, :3, 3]
    rel = points - origin[:, None, :]
    p_cam = torch.einsum("bji,bpj->bpi", rotation, rel)  # Rᵀ (p − o): camera axes, looking along −z
    focal = 1.0 / torch.tan(safe.fov.to(device=points.device, dtype=points.dtype) / 360.0 * math.pi)
    ahead = -p_cam[..., 2]
    in_front = ahead > 1e-8
    xy = focal[:, None, None] * p_cam[..., :2] / ahead.clamp_min(1e-8)[..., None]
    return xy, rel.norm(dim=-1), in_front


def backproject(depth: Tensor, cameras: Cameras) -> Tensor:
    """depth [B, 1, H, W] → world points [B, H·W, 3] (row-major) at that distance along each pixel's ray."""
    b, _, h, w = depth.shape
    origins, directions = world_rays(cameras.to(depth.device), pixel_grid(h, w, device=depth.device)[None])
    return origins[:, None, :] + depth.reshape(b, h * w, 1) * directions.to(depth.dtype)


def _sample(image: Tensor, xy: Tensor, h: int, w: int, mode: str = "bilinear") -> Tensor:
    """Read image [B, C, H', W'] at camera-plane xy [B, H·W, 2] (bilinear or nearest) → [B, C, H, W]."""
    grid = torch.stack([xy[..., 0], -xy[..., 1]], dim=-1).reshape(xy.shape[0], h, w, 2)
    return F.grid_sample(image, grid.to(image.dtype), mode=mode, padding_mode="zeros", align_corners=True)


@dataclass
class Reprojection:
    """Per-pixel result of reprojecting A into B, on A's pixel grid.

    error [B, 1, H, W]: mean |ΔRGB| over channels in [0, 1] colour units; valid [B, 1, H, W] bool;
    warped [B, 3, H, W]: B's colours read at A's reprojected points.
    """

    error: Tensor
    sq_error: Tensor
    valid: Tensor
    warped: Tensor

    def stats(self) -> ReprojectionStats:
        v = self.valid
        return ReprojectionStats(
            abs_error=float(self.error[v].double().sum()), sq_error=float(self.sq_error[v].double().sum()),
            num_valid=int(v.sum()), num_pixels=v.numel(),
        )


@dataclass
class ReprojectionStats:
    """Sums over pixels, so that results of many pairs pool exactly (``a + b``)."""

    abs_error: float = 0.0
    sq_error: float = 0.0
    num_valid: int = 0
    num_pixels: int = 0

    def __add__(self, other: ReprojectionStats) -> ReprojectionStats:
        return ReprojectionStats(self.abs_error + other.abs_error, self.sq_error + other.sq_error,
                                 self.num_valid + other.num_valid, self.num_pixels + other.num_pixels)

    @property
    def mae(self) -> float:
        """Mean absolute colour error over valid pixels, colours in [0, 1] (NaN without valid pixels)."""
        return self.abs_error / self.num_valid if self.num_valid else math.nan

    @property
    def psnr(self) -> float:
        """PSNR in dB (peak 1) of the pooled squared error over valid pixels."""
        if not self.num_valid:
            return math.nan
        mse = self.sq_error / self.num_valid
        return math.inf if mse == 0 else -10.0 * math.log10(mse)

    @property
    def valid_fraction(self) -> float:
        return self.num_valid / self.num_pixels if self.num_pixels else 0.0


def _surface_depth(view: View) -> Tensor:
    """Σ wᵢ zᵢ / Σ wᵢ: the expected termination distance of rays that terminate. Rendered depth is not
    normalised, so it underestimates the surface where a ray is partly transparent (silhouettes)."""
    if view.opacity is None:
        return view.depth
    return view.depth / view.opacity.clamp_min(1e-6)


def reproject(a: View, b: View, depth_tolerance: float, opacity_threshold: float = 0.9,
              far: float | None = None) -> Reprojection:
    """Reproject view A into view B (see the module docstring for the validity rules)."""
    n, _, h, w = a.image.shape
    if a.depth.shape != (n, 1, h, w) or b.image.shape[0] != n or b.depth.shape[0] != n:
        raise ValueError("views must hold the same batch, with depth [B, 1, H, W] matching each image")
    depth_a, depth_b = _surface_depth(a), _surface_depth(b)
    points = backproject(depth_a, a.cameras)
    xy, distance, in_front = project_points(points, b.cameras)
    warped = _sample(b.image, xy, h, w)
    inside = (xy.abs() <= 1.0 + 1e-6).all(dim=-1) & in_front
    distance = distance.reshape(n, 1, h, w)
    valid = inside.reshape(n, 1, h, w)
    # Interpolated depth can match by accident across a silhouette (foreground mixed with background), so
    # the nearest pixel's depth must agree as well.
    for mode in ("bilinear", "nearest"):
        valid &= (distance - _sample(depth_b, xy, h, w, mode)).abs() <= depth_tolerance
    if a.opacity is not None:
        valid &= a.opacity >= opacity_threshold
    if b.opacity is not None:
        valid &= _sample(b.opacity, xy, h, w) >= opacity_threshold
    if far is not None:
        valid &= depth_a < far - depth_tolerance
    diff = (a.image - warped) / 2.0  # [−1, 1] data range → [0, 1] colour units
    return Reprojection(diff.abs().mean(dim=1, keepdim=True), diff.square().mean(dim=1, keepdim=True), valid, warped)


@dataclass
class ConsistencyResult:
    """Pooled over all pairs: ``mae`` (colour units [0, 1]), ``psnr`` (dB), ``valid_fraction``."""

    mae: float
    psnr: float
    valid_fraction: float
    num_latents: int
    num_pairs: int
    protocol: dict = field(default_factory=dict)


def consistency_metric(
    G: Generator,
    dataset: MetricDataset | None = None,
    camera_mode: str = "random",
    num_latents: int = 64,
    yaw_offset: float = 0.2,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    seed: int = 0,
    truncation_psi: float = 1.0,
    resolution: int | None = None,
    depth_tolerance: float | None = None,
    opacity_threshold: float = 0.9,
    progress: bool = False,
) -> ConsistencyResult:
    """The 3D-consistency protocol of the module docstring on a generator (G_ema); ``progress``: a bar on stderr."""
    if num_latents < 1 or batch_size < 1:
        raise ValueError(f"num_latents and batch_size must be ≥ 1, got {num_latents} and {batch_size}")
    cam = G.cfg.camera
    res = resolution or G.cfg.image_resolution
    tol = default_depth_tolerance(cam.ray_start, cam.ray_end) if depth_tolerance is None else depth_tolerance
    gen = torch.Generator().manual_seed(seed)
    angles_all, labels_all = sample_conditions(cam, G.c_dim, dataset, num_latents, camera_mode, gen)
    z_all = torch.randn(num_latents, G.z_dim, generator=gen)
    total = ReprojectionStats()
    G.eval()
    with torch.no_grad():
        batches = (range(start, min(start + batch_size, num_latents)) for start in range(0, num_latents, batch_size))
        for latents in track(batches, num_latents, f"consistency ({camera_mode} cameras)", "latent", progress):
            sl = slice(latents.start, latents.stop)
            base = angles_all[sl].to(device)
            c = None if labels_all is None else labels_all[sl].to(device)
            ws = G.mapping(z_all[sl].to(device), c, truncation_psi, camera_angles=base)
            planes = G.synthesize(ws, "const")

            def view(angles: Tensor, planes: Tensor = planes) -> View:
                cameras = G.cameras(angles)
                out = G.render(planes, cameras, resolution=res, deterministic=True)
                return View(out.image, out.depth, cameras, out.opacity)

            a = view(base)
            for sign in (1.0, -1.0):
                other = base.clone()
                other[:, 0] += sign * yaw_offset
                total = total + reproject(a, view(other), tol, opacity_threshold, far=cam.ray_end).stats()
    protocol = {
        "num_latents": num_latents, "pairs_per_latent": 2, "yaw_offset": yaw_offset, "cameras": camera_mode,
        "truncation_psi": truncation_psi, "resolution": res, "depth_tolerance": tol,
        "opacity_threshold": opacity_threshold, "noise": "const", "rendering": "deterministic", "seed": seed,
    }
    return ConsistencyResult(total.mae, total.psnr, total.valid_fraction, num_latents, 2 * num_latents, protocol)
