"""Camera conventions: docs/method.md §11 properties 5, 6 and 7, pitch validation and no input mutation."""

from __future__ import annotations

import math

import pytest
import torch

from epigraf.cameras import Cameras, camera_origins, checked_angles
from epigraf.cameras.rays import pixel_grid, points_along_rays, world_rays


def _cameras(yaw: float, pitch: float, fov: float = 12.0, radius: float = 1.0) -> Cameras:
    return Cameras.from_angles(torch.tensor([[yaw, pitch, 0.0]]), fov, radius)


def _full_rays(cameras: Cameras, res: int) -> tuple[torch.Tensor, torch.Tensor]:
    """origins [B, 3], directions [B, res, res, 3]."""
    origins, dirs = world_rays(cameras, pixel_grid(res, res).unsqueeze(0))
    return origins, dirs.reshape(-1, res, res, 3)


ANGLES = torch.tensor(
    [[0.0, math.pi / 2, 0.0], [0.7, 1.2, 0.3], [-2.5, 2.6, 0.0], [3.1, 0.2, -1.0], [1.0, 1e-6, 0.0]]
)


# Property 5 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("radius", [1.0, 2.7])
def test_origin_formula_and_radius(radius):
    cams = Cameras.from_angles(ANGLES[:4], 12.0, radius)
    origins, _ = world_rays(cams, pixel_grid(3, 3).unsqueeze(0))
    yaw, pitch = ANGLES[:4, 0], ANGLES[:4, 1]
    expected = radius * torch.stack([pitch.sin() * yaw.cos(), pitch.cos(), pitch.sin() * yaw.sin()], dim=1)
    torch.testing.assert_close(origins, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(origins.norm(dim=1), torch.full((4,), radius), atol=1e-6, rtol=0)


def test_rotation_orthonormal_right_handed():
    rot = Cameras.from_angles(checked_angles(ANGLES), 12.0, 1.0).cam2world()[:, :3, :3]
    eye = torch.eye(3).expand(len(ANGLES), 3, 3)
    torch.testing.assert_close(rot.transpose(1, 2) @ rot, eye, atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(len(ANGLES)), atol=1e-6, rtol=0)


@pytest.mark.parametrize("res", [5, 9])
def test_centre_ray_points_at_origin(res):
    cams = Cameras.from_angles(ANGLES[:4], 30.0, 1.3)
    origins, dirs = _full_rays(cams, res)
    centre = dirs[:, res // 2, res // 2]
    torch.testing.assert_close(centre, -origins / origins.norm(dim=1, keepdim=True), atol=1e-6, rtol=0)


def test_frontal_camera_axes():
    cams = _cameras(0.0, math.pi / 2)
    rot = cams.cam2world()[0, :3, :3]
    origins, dirs = _full_rays(cams, 5)
    torch.testing.assert_close(origins[0], torch.tensor([1.0, 0.0, 0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(dirs[0, 2, 2], torch.tensor([-1.0, 0.0, 0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(rot[:, 0], torch.tensor([0.0, 0.0, -1.0]), atol=1e-6, rtol=0)  # image right
    torch.testing.assert_close(rot[:, 1], torch.tensor([0.0, 1.0, 0.0]), atol=1e-6, rtol=0)  # image up


@pytest.mark.parametrize("res", [4, 32, 65])
def test_top_left_ray_fov12(res):
    _, dirs = _full_rays(_cameras(0.0, math.pi / 2, fov=12.0), res)
    top_left = dirs[0, 0, 0]
    assert top_left[0] < 0 and top_left[1] > 0 and top_left[2] > 0
    torch.testing.assert_close(top_left, torch.tensor([-0.9891, 0.1040, 0.1040]), atol=1e-4, rtol=0)


# Property 6 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("res", [6, 7])
def test_yaw_negation_mirrors(res):
    angles = ANGLES[:4]
    mirrored = angles.clone()
    mirrored[:, 0] = -mirrored[:, 0]
    flip = torch.tensor([1.0, 1.0, -1.0])
    o, d = _full_rays(Cameras.from_angles(angles, 12.0, 1.0), res)
    o_m, d_m = _full_rays(Cameras.from_angles(mirrored, 12.0, 1.0), res)
    torch.testing.assert_close(o_m, o * flip, atol=1e-6, rtol=0)
    torch.testing.assert_close(d_m, d.flip(2) * flip, atol=1e-6, rtol=0)


# Property 7 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fov", "near", "far", "cube_scale", "expected_max"),
    [(12.0, 0.88, 1.12, 0.2, 0.1968), (30.0, 0.75, 1.25, 0.475, 0.4740)],
)
def test_frustum_inside_cube(fov, near, far, cube_scale, expected_max):
    yaw = torch.linspace(0, 2 * math.pi, 181)
    pitch = torch.linspace(0, math.pi, 183)[1:-1]
    yy, pp = torch.meshgrid(yaw, pitch, indexing="ij")
    angles = torch.stack([yy.flatten(), pp.flatten(), torch.zeros(yy.numel())], dim=1)
    origins, dirs = world_rays(Cameras.from_angles(angles, fov, 1.0), pixel_grid(2, 2).unsqueeze(0))
    points = points_along_rays(origins, dirs, torch.tensor([near, far]))
    max_abs = points.abs().amax().item()
    assert max_abs <= cube_scale
    assert max_abs == pytest.approx(expected_max, abs=5e-4)


# Validation and purity -----------------------------------------------------------------------------


@pytest.mark.parametrize("pitch", [90.0, -0.5, 3.3])
def test_pitch_outside_range_raises(pitch):
    with pytest.raises(ValueError, match="pitch"):
        world_rays(_cameras(0.0, pitch), pixel_grid(2, 2).unsqueeze(0))


def test_inputs_not_mutated():
    angles = torch.tensor([[0.3, 0.0, 0.0], [0.1, math.pi, 0.5]])
    cams = Cameras.from_angles(angles, 12.0, 1.0)
    before = angles.clone()
    origins, dirs = world_rays(cams, pixel_grid(3, 3).unsqueeze(0))
    assert torch.equal(angles, before)
    assert torch.equal(cams.angles, before)
    assert torch.isfinite(dirs).all() and torch.isfinite(origins).all()


def test_camera_origins_matches_world_rays():
    cams = Cameras.from_angles(ANGLES[:4], 12.0, 1.5)
    origins, _ = world_rays(cams, pixel_grid(2, 2).unsqueeze(0))
    torch.testing.assert_close(origins, camera_origins(ANGLES[:4], 1.5), atol=1e-6, rtol=0)
