"""Depth and normal maps as people read them: the expected depth given a hit (Σ w·t / Σ w) where the opacity reaches
½, the background distinct, the same in `generate`, `video`, the viewer (tests/test_viewer_api.py: its frames equal
generate's files) and `invert`; the raw Σ w·t with `generate --depth-format npy`.

The model here has an open far end and a white background, as the builtin preset, so Σ w < 1 on every ray: the raw
Σ w·t (≤ 0.53) lies below the near plane (0.88), which painted the whole old depth PNG white.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from epigraf.cameras.paths import camera_path, points, take
from epigraf.cameras.rays import camera_directions, pixel_grid
from epigraf.checkpoint import load_checkpoint, save_checkpoint
from epigraf.cli import main
from epigraf.config import ModelConfig
from epigraf.export.images import DEPTH_BACKGROUND, DEPTH_FAR_GREY, depth_to_uint8, normals_to_uint8
from epigraf.inference import render_all, with_ray_steps
from epigraf.nn.generator import Generator
from epigraf.render.depth import SURFACE_OPACITY, depth_normals, surface_depth
from epigraf.seeds import seeds_to_ws
from test_generator import tiny_generator_config

RES = 16


def png(path) -> np.ndarray:
    return np.asarray(Image.open(path))


# ------------------------------------------------------------------------------------------------ the encoding


def test_expected_depth_given_a_hit_and_the_background():
    opacity = torch.tensor([0.0, 0.3, 0.5, 0.8, 1.0]).reshape(1, 1, 1, 5)
    distance = torch.tensor([1.0, 1.0, 0.9, 1.1, 0.88]).reshape(1, 1, 1, 5)
    expected, hit = surface_depth(distance * opacity, opacity)
    assert hit.flatten().tolist() == [False, False, True, True, True]
    assert torch.allclose(expected[..., 1:], distance[..., 1:]) and expected[..., 0] == 0
    grey = depth_to_uint8(distance * opacity, 0.88, 1.12, opacity=opacity)[0, 0, :, 0]
    # near = white, far = dark grey, in between linearly; background black, darker than any depth
    assert grey.tolist() == [DEPTH_BACKGROUND, DEPTH_BACKGROUND, round(32 + 223 * 0.22 / 0.24),
                             round(32 + 223 * 0.02 / 0.24), 255]
    assert DEPTH_BACKGROUND < DEPTH_FAR_GREY
    opaque = depth_to_uint8(distance, 0.88, 1.12, opacity=None)[0, 0, :, 0]
    assert opaque[-1] == 255 and (opaque >= DEPTH_FAR_GREY).all()


def test_normals_stop_at_the_outline_and_the_background_is_the_zero_vector():
    """A wall facing the camera seen through a round hole: every hit pixel, those on the outline included, gets
    the wall's normal (one-sided differences there, the background never enters); the rest mid-grey."""
    fov = torch.tensor([40.0])
    dirs = camera_directions(pixel_grid(9, 9)[None], fov).reshape(1, 9, 9, 3)
    distance = (2.0 / -dirs[..., 2])[:, None]
    yy, xx = torch.meshgrid(torch.arange(9), torch.arange(9), indexing="ij")
    inside = ((yy - 4) ** 2 + (xx - 4) ** 2 <= 10).float()[None, None]  # each hit has a hit neighbour per axis
    opacity = 0.7 * inside  # below 1: the depth is Σ w·t = 0.7·t
    rgb = normals_to_uint8(distance * opacity, fov, opacity=opacity)[0].astype(int)
    wall = np.array([128, 128, 255])
    assert (np.abs(rgb[inside[0, 0].bool().numpy()] - wall) <= 1).all()
    assert (rgb[~inside[0, 0].bool().numpy()] == 128).all()
    expected, hit = surface_depth(distance * opacity, opacity)
    assert torch.allclose(depth_normals(expected, fov, hit).norm(dim=1), inside[:, 0])


# ------------------------------------------------------------------------------------ a model with opacity < 1


@pytest.fixture(scope="module")
def translucent(tmp_path_factory):
    """A tiny model whose rays end with opacity 0.45–0.53 (about half the pixels reach ½) and raw Σ w·t ≤ 0.53.
    The builtin preset renders with the same open far end and white background."""
    torch.manual_seed(0)
    g = tiny_generator_config(white_back=True, open_far_end=True, density_shift=2.5)
    path = tmp_path_factory.mktemp("net") / "net.safetensors"
    return save_checkpoint(path, ModelConfig(generator=g), G_ema=Generator(g).eval())


@pytest.fixture(scope="module")
def front_view(translucent):
    G = with_ray_steps(load_checkpoint(translucent).G_ema, 2)
    cam = G.cfg.camera
    cameras = take(points([0.3], math.pi / 2, cam.fov, cam.radius), [0])
    return G, render_all(G, seeds_to_ws(G, [0]), cameras, resolution=RES), cameras


def test_the_model_is_translucent(front_view):
    G, out, _ = front_view
    cam = G.cfg.camera
    assert out.opacity.max() < 0.6 and out.depth.max() < cam.ray_start  # the old PNG: all white
    hit = out.opacity >= SURFACE_OPACITY
    assert hit.any() and (~hit).any()


def test_generate_depth_shows_the_object_in_grey_and_keeps_the_raw_maps(translucent, front_view, tmp_path):
    G, out, cameras = front_view
    common = ["generate", "--checkpoint", str(translucent), "--seeds", "0", "--yaw", "0.3", "--resolution",
              str(RES), "--depth"]
    assert main([*common, "--normals", "--out", str(tmp_path / "png")]) == 0
    depth = png(tmp_path / "png/seed0000_depth.png")
    cam = G.cfg.camera
    np.testing.assert_array_equal(depth, depth_to_uint8(out.depth, cam.ray_start, cam.ray_end, opacity=out.opacity)[0])
    hit = (out.opacity >= SURFACE_OPACITY)[0, 0].numpy()
    assert (depth[~hit] == DEPTH_BACKGROUND).all()
    assert (depth[hit] > DEPTH_FAR_GREY).all() and (depth[hit] < 255).all()  # the object inside the depth window
    normals = png(tmp_path / "png/seed0000_normals.png")
    assert (normals[~hit] == 128).all() and (normals[hit][:, 2] > 128).all()

    assert main([*common, "--depth-format", "npy", "--out", str(tmp_path / "npy")]) == 0
    assert sorted(p.name for p in (tmp_path / "npy").iterdir()) == [
        "seed0000.png", "seed0000_depth.npy", "seed0000_opacity.npy"]
    np.testing.assert_allclose(np.load(tmp_path / "npy/seed0000_depth.npy"), out.depth[0, 0].numpy(), rtol=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "npy/seed0000_opacity.npy"), out.opacity[0, 0].numpy(), rtol=1e-6)


def test_depth_format_without_depth_is_an_error(translucent, tmp_path, capsys):
    assert main(["generate", "--checkpoint", str(translucent), "--depth-format", "npy",
                 "--out", str(tmp_path)]) == 2
    assert "--depth-format needs --depth" in capsys.readouterr().err


def test_video_depth_and_normals_frames_are_generates_maps(translucent, front_view, tmp_path):
    G, _, _ = front_view
    cam = G.cfg.camera
    assert main(["video", "--checkpoint", str(translucent), "--seeds", "0", "--frames", "3", "--resolution",
                 str(RES), "--depth", "--normals", "--format", "frames", "--out", str(tmp_path)]) == 0
    cameras = camera_path("front_circle", 3, cam.fov, cam.radius)
    out = render_all(G, seeds_to_ws(G, [0]), cameras, resolution=RES)
    depth = depth_to_uint8(out.depth, cam.ray_start, cam.ray_end, opacity=out.opacity)
    normals = normals_to_uint8(out.depth, cameras.fov, opacity=out.opacity)
    for i in range(3):
        np.testing.assert_array_equal(png(tmp_path / f"seed0000_front_circle_depth/frame_{i:04d}.png"), depth[i])
        np.testing.assert_array_equal(png(tmp_path / f"seed0000_front_circle_normals/frame_{i:04d}.png"),
                                      normals[i])
    assert (depth == DEPTH_BACKGROUND).any() and (depth > DEPTH_FAR_GREY).any()
