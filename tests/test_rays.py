"""Ray grids: docs/method.md §11 property 1 (ray part) and the original's `rays` fixture case."""

from __future__ import annotations

import pytest
import torch

from epigraf.cameras import Cameras
from epigraf.cameras.rays import camera_directions, patch_grid, pixel_grid, points_along_rays, world_rays
from epigraf.patches import PatchParams
from epigraf.render.samplers import coarse_depths


def test_pixel_grid_convention():
    grid = pixel_grid(3, 5)
    assert grid.shape == (15, 2) and grid.dtype == torch.float32
    rows = grid.reshape(3, 5, 2)
    torch.testing.assert_close(rows[0, :, 0], torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]))
    torch.testing.assert_close(rows[:, 0, 1], torch.tensor([1.0, 0.0, -1.0]))  # row 0 is the top
    assert (rows[:, :, 1] == rows[:, :1, 1]).all() and (rows[:, :, 0] == rows[:1, :, 0]).all()


def test_pixel_grid_rejects_degenerate():
    with pytest.raises(ValueError):
        pixel_grid(1, 4)


# Property 1 (rays) ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("a", "b"), [(0, 0), (16, 16), (5, 9), (13, 2), (0, 16)])
def test_patch_rays_are_crop_of_full_rays(a, b):
    big, small = 32, 16
    angles = torch.tensor([[0.4, 1.3, 0.0], [-2.0, 2.2, 0.0]])
    cams = Cameras.from_angles(angles, torch.tensor(12.0), 1.0)
    o_full, d_full = world_rays(cams, pixel_grid(big, big).unsqueeze(0))
    s = (small - 1) / (big - 1)
    params = PatchParams(torch.full((2, 2), s), torch.tensor([[a, b], [a, b]]) / (big - 1.0))
    o_patch, d_patch = world_rays(cams, patch_grid(params.scales, params.offsets, small))
    crop = d_full.reshape(2, big, big, 3)[:, big - small - b : big - b, a : a + small]
    torch.testing.assert_close(d_patch.reshape(2, small, small, 3), crop, atol=1e-6, rtol=0)
    torch.testing.assert_close(o_patch, o_full, atol=0, rtol=0)


def test_patch_grid_general_form(torch_generator):
    r = 7
    s = torch.rand(4, generator=torch_generator) * 0.9 + 0.1
    o = torch.rand(4, 2, generator=torch_generator) * (1 - s[:, None])
    grid = patch_grid(s[:, None].expand(4, 2), o, r).reshape(4, r, r, 2)
    i = torch.arange(r, dtype=torch.float32).reshape(1, r, 1)
    j = torch.arange(r, dtype=torch.float32).reshape(1, 1, r)
    sv, ox, oy = s.reshape(4, 1, 1), o[:, 0].reshape(4, 1, 1), o[:, 1].reshape(4, 1, 1)
    x = -1 + 2 * ox + 2 * sv * j / (r - 1)
    y = -1 + 2 * oy + 2 * sv * (r - 1 - i) / (r - 1)
    torch.testing.assert_close(grid[..., 0], x.expand(4, r, r), atol=1e-6, rtol=0)
    torch.testing.assert_close(grid[..., 1], y.expand(4, r, r), atol=1e-6, rtol=0)


def test_patch_grid_wants_scales_and_offsets_of_one_shape():
    with pytest.raises(ValueError, match=r"\[B, 2\]"):
        patch_grid(torch.full((2, 2), 0.5), torch.zeros(2), 4)
    with pytest.raises(ValueError, match=r"\[B, 2\]"):
        patch_grid(torch.full((2,), 0.5), torch.zeros(2), 4)


def test_patch_grid_uses_each_axis_scale():
    params = PatchParams(torch.tensor([[0.5, 0.25]]), torch.tensor([[0.5, 0.0]]))
    grid = patch_grid(params.scales, params.offsets, 2)
    assert grid[0, :, 0].tolist() == [0.0, 1.0, 0.0, 1.0]
    assert grid[0, :, 1].tolist() == [-0.5, -0.5, -1.0, -1.0]


def test_camera_directions_unit_and_fov():
    grid = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [-1.0, 1.0]]])
    d = camera_directions(grid, torch.tensor([12.0, 90.0]))
    assert d.shape == (2, 3, 3)
    torch.testing.assert_close(d.norm(dim=-1), torch.ones(2, 3))
    torch.testing.assert_close(d[:, 0], torch.tensor([[0.0, 0.0, -1.0]] * 2))
    # fov 90°: the image-plane depth is 1, so the right-edge ray is at 45°.
    torch.testing.assert_close(d[1, 1], torch.tensor([2**-0.5, 0.0, -(2**-0.5)]))


# Fixture case `rays` -------------------------------------------------------------------------------


def test_rays_fixture(original_fixtures, rel_err):
    fx = original_fixtures
    kw = fx.kwargs("rays")
    inputs, ref = fx.inputs("rays"), fx.outputs("rays")
    angles = inputs["camera_angles"]
    params = PatchParams(inputs["patch_scales"], inputs["patch_offsets"])
    cams = Cameras.from_angles(angles, kw["fov"], kw["radius"])
    full = pixel_grid(kw["full_resolution"], kw["full_resolution"]).unsqueeze(0)
    n = kw["num_steps"]

    z = coarse_depths(kw["ray_start"], kw["ray_end"], n, (), deterministic=True)
    d_cam_full = camera_directions(full, cams.fov)
    d_cam_patch = camera_directions(
        patch_grid(params.scales, params.offsets, kw["patch_resolution"]), torch.full((len(params),), kw["fov"])
    )
    origins, d_world = world_rays(cams, full)
    points = points_along_rays(origins, d_world, z)
    ours = {
        "z_vals": z,
        "rays_d_cam_full": d_cam_full,
        "rays_d_cam_patch": d_cam_patch,
        "cam2world": cams.cam2world(),
        "points_world": points,
        "ray_d_world": d_world,
        "ray_o_world": origins[:, None].expand_as(d_world),
    }
    errors = {name: rel_err(ours[name], ref[name]) for name in ref}
    assert set(errors) == set(ours)
    assert max(errors.values()) < fx.tol, errors
