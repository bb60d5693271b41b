"""The 3D-consistency metric: projection convention, an analytic scene, warped views, and the protocol."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from epigraf.cameras import Cameras
from epigraf.cameras.rays import pixel_grid, world_rays
from epigraf.metrics.consistency import View, consistency_metric, project_points, reproject
from epigraf.render.volume import RaySamplingOptions, render_rays

FOV, NEAR, FAR, RES = 30.0, 0.75, 1.25, 40
TOL = 0.02 * (FAR - NEAR)
MIX = torch.tensor([[1.0, 0.4, -0.6], [0.3, 1.2, 0.5], [-0.7, 0.2, 1.1]])


def sphere_field(points: Tensor) -> Tensor:
    """A solid-textured opaque sphere of radius 0.2: colour is a smooth function of the 3D position."""
    rgb = 0.8 * torch.sin(10.0 * points @ MIX)
    raw = 1e4 * (0.2 - points.norm(dim=-1, keepdim=True))
    return torch.cat([rgb, raw], dim=-1)


def render_view(yaw: float, pitch: float = 1.35, label_yaw: float | None = None) -> View:
    """Render the analytic scene at (yaw, pitch); ``label_yaw`` claims another camera (a fake 'upsampler')."""
    cams = Cameras.from_angles(torch.tensor([[yaw, pitch, 0.0]]), fov=FOV, radius=1.0)
    origins, directions = world_rays(cams, pixel_grid(RES, RES)[None])
    opts = RaySamplingOptions(num_steps=48, near=NEAR, far=FAR, deterministic=True)
    out = render_rays(sphere_field, origins, directions, opts)

    def image(x: Tensor) -> Tensor:
        return x.transpose(1, 2).reshape(1, x.shape[-1], RES, RES)

    labelled = cams if label_yaw is None else Cameras.from_angles(
        torch.tensor([[label_yaw, pitch, 0.0]]), fov=FOV, radius=1.0)
    return View(image(out.color), image(out.depth), labelled, image(out.opacity))


@pytest.fixture(scope="module")
def views() -> dict[str, View]:
    return {"a": render_view(0.3), "b": render_view(0.5), "b_off": render_view(0.56, label_yaw=0.5)}


def test_projection_inverts_the_rays():
    g = torch.Generator().manual_seed(0)
    angles = torch.stack([torch.rand(4, generator=g) * 6 - 3, torch.rand(4, generator=g) * 2.6 + 0.25,
                          torch.zeros(4)], dim=1)
    cams = Cameras(angles, torch.tensor([12.0, 30.0, 45.0, 60.0]), torch.tensor([1.0, 1.0, 2.5, 0.7]))
    grid = pixel_grid(5, 7)[None]
    origins, directions = world_rays(cams, grid)
    depth = torch.rand(4, 35, 1, generator=g) + 0.2
    xy, dist, in_front = project_points(origins[:, None] + depth * directions, cams)
    torch.testing.assert_close(xy, grid.expand(4, -1, -1), atol=1e-5, rtol=0)
    torch.testing.assert_close(dist, depth[..., 0], atol=1e-5, rtol=0)
    assert in_front.all()
    _, _, behind = project_points(origins[:, None] - depth * directions, cams)
    assert not behind.any()


def test_projection_axes_of_the_frontal_camera():
    cams = Cameras.from_angles(torch.tensor([[0.0, math.pi / 2, 0.0]]), fov=12.0, radius=1.0)
    # Frontal camera at (1, 0, 0): image right = world −z, image up = world +y.
    xy, dist, _ = project_points(torch.tensor([[[0.0, 0.0, -0.01], [0.0, 0.01, 0.0], [0.0, 0.0, 0.0]]]), cams)
    assert xy[0, 0, 0] > 0 and abs(xy[0, 0, 1]) < 1e-6
    assert xy[0, 1, 1] > 0 and abs(xy[0, 1, 0]) < 1e-6
    assert torch.allclose(xy[0, 2], torch.zeros(2), atol=1e-6) and dist[0, 2] == pytest.approx(1.0)
    # The top-left pixel's ray (docs/method.md §11 property 5) projects to (−1, 1).
    corner = torch.tensor([[[-0.9891, 0.1040, 0.1040]]])
    xy, _, _ = project_points(torch.tensor([[[1.0, 0.0, 0.0]]]) + corner, cams)
    torch.testing.assert_close(xy[0, 0], torch.tensor([-1.0, 1.0]), atol=2e-3, rtol=0)


def test_analytic_scene_is_consistent(views):
    r = reproject(views["a"], views["b"], TOL, far=FAR).stats()
    assert r.valid_fraction > 0.25  # the sphere fills a good part of both views
    assert r.mae < 0.01 and r.psnr > 35
    # The other direction too.
    assert reproject(views["b"], views["a"], TOL, far=FAR).stats().mae < 0.01


def test_warped_views_score_clearly_worse(views):
    base = reproject(views["a"], views["b"], TOL, far=FAR).stats()
    b = views["b"]
    shifted = View(torch.roll(b.image, shifts=2, dims=-1), b.depth, b.cameras, b.opacity)
    r_shift = reproject(views["a"], shifted, TOL, far=FAR).stats()
    assert r_shift.mae > 5 * base.mae and r_shift.mae > 0.03
    # A view rendered from a slightly different camera than the one it claims (what an upsampler that
    # hallucinates view-dependent detail amounts to) is inconsistent too.
    r_off = reproject(views["a"], views["b_off"], TOL, far=FAR).stats()
    assert r_off.mae > 5 * base.mae


def test_depth_test_and_opacity_mask_invalid_pixels(views):
    a, b = views["a"], views["b"]
    behind = View(b.image, b.depth - 0.1, b.cameras, b.opacity)  # B claims a surface in front: A is occluded
    assert reproject(a, behind, TOL, far=FAR).stats().num_valid == 0
    transparent = View(b.image, b.depth, b.cameras, torch.zeros_like(b.opacity))
    assert reproject(a, transparent, TOL, far=FAR).stats().num_valid == 0
    # Background pixels of A (opacity 0) are never valid.
    r = reproject(a, b, TOL, far=FAR)
    assert not r.valid[a.opacity < 0.5].any()


def test_metric_on_a_tiny_generator():
    from epigraf.metrics.evaluate import compute_metric
    from epigraf.nn.generator import Generator
    from test_checkpoint import tiny_model_config

    torch.manual_seed(0)
    G = Generator(tiny_model_config().generator).eval()
    r = consistency_metric(G, None, "random", num_latents=2, batch_size=2, resolution=16)
    assert r.num_pairs == 4 and 0.0 <= r.valid_fraction <= 1.0
    assert r.protocol["yaw_offset"] == 0.2 and r.protocol["rendering"] == "deterministic"
    assert math.isnan(r.mae) or r.mae >= 0
    again = compute_metric(G, None, "consistency", "random", num=2, batch_size=2, resolution=16)
    assert again.num_fake == 4 and again.details["valid_fraction"] == pytest.approx(r.valid_fraction)
    with pytest.raises(ValueError, match="dataset cameras"):
        consistency_metric(G, None, "dataset", num_latents=1)
