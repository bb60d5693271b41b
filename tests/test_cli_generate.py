"""``epigraf generate``: images of the requested size and camera, seed ranges, grids, depth and normal maps,
ray-step multiplier, classes of conditional models, clear flag errors."""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
import pytest
import torch
from PIL import Image

from epigraf.cameras.rays import camera_directions, pixel_grid
from epigraf.checkpoint import load_checkpoint, save_checkpoint
from epigraf.cli import main
from epigraf.export.images import to_uint8
from epigraf.inference import with_ray_steps
from epigraf.nn.generator import Generator
from epigraf.render.depth import depth_normals
from epigraf.seeds import seed_classes
from test_checkpoint import tiny_model_config


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_model_config()
    return save_checkpoint(tmp_path / "net.safetensors", cfg, G_ema=Generator(cfg.generator))


def test_generates_images_and_depth_of_the_requested_size(checkpoint, tmp_path):
    out = tmp_path / "out"
    assert main(["generate", "--checkpoint", str(checkpoint), "--seeds", "1", "2", "--resolution", "24",
                 "--yaw", "0.4", "--depth", "--out", str(out)]) == 0
    for name in ("seed0001.png", "seed0002.png", "seed0001_depth.png"):
        img = np.asarray(Image.open(out / name))
        assert img.shape == (24, 24, 3)
    a, b = (np.asarray(Image.open(out / f"seed000{i}.png")) for i in (1, 2))
    assert not np.array_equal(a, b)


def test_same_seed_and_camera_give_the_same_image(checkpoint, tmp_path):
    for d in ("a", "b"):
        main(["generate", "--checkpoint", str(checkpoint), "--seeds", "5", "--out", str(tmp_path / d)])
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a/seed0005.png")),
                          np.asarray(Image.open(tmp_path / "b/seed0005.png")))


@pytest.mark.parametrize("args, message", [
    (["--pitch", "95"], "pitch must be in [0, π]"),
    (["--resolution", "1"], "--resolution must be ≥ 2"),
    (["--class-index", "3"], "--class-index must be in [0, 0)"),
    (["--seeds", "abc"], "error: --seeds 'abc' is not a seed or a range of seeds; give whole numbers from 0 to "
                         "4,294,967,295 and inclusive ranges, e.g. --seeds 0-7,12\n"),
])
def test_bad_flags_give_one_clear_error(checkpoint, tmp_path, capsys, args, message):
    assert main(["generate", "--checkpoint", str(checkpoint), "--out", str(tmp_path), *args]) == 2
    assert message in capsys.readouterr().err


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["generate", "--checkpoint", str(tmp_path / "x.safetensors")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_a_directory_as_checkpoint_says_so_and_lists_its_snapshots(checkpoint, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    assert main(["generate", "--checkpoint", str(run)]) == 2
    assert f"{run} is a directory, not a checkpoint file, and holds no .safetensors" in capsys.readouterr().err
    for nimg in (8, 16):
        (run / f"network-{nimg:010d}.safetensors").write_bytes(checkpoint.read_bytes())
    assert main(["generate", "--checkpoint", str(run)]) == 2
    assert (f"{run} is a directory, not a checkpoint file; give one of its 2 checkpoints (network-0000000008."
            f"safetensors, network-0000000016.safetensors), e.g. {run / 'network-0000000016.safetensors'}"
            in capsys.readouterr().err)


# ----------------------------------------------------------------------------- cameras, grids, maps, classes


def png(path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(int)


def test_image_shows_the_requested_camera(checkpoint, tmp_path):
    """The file equals a direct Generator call with the same z, truncation and camera (yaw, pitch, fov, radius)."""
    assert main(["generate", "--checkpoint", str(checkpoint), "--seeds", "4", "--resolution", "20",
                 "--yaw", "0.5", "--pitch", "1.3", "--fov", "14", "--radius", "1.05", "--truncation", "0.6",
                 "--ray-step-multiplier", "1", "--out", str(tmp_path)]) == 0
    G = load_checkpoint(checkpoint).G_ema
    z = torch.from_numpy(np.random.RandomState(4).randn(1, 16)).float()
    with torch.no_grad():
        out = G(z, None, torch.tensor([[0.5, 1.3, 0.0]]), truncation_psi=0.6, deterministic=True, resolution=20,
                fov=14.0, radius=1.05)
    assert np.abs(png(tmp_path / "seed0004.png") - to_uint8(out.image)[0]).max() <= 1
    main(["generate", "--checkpoint", str(checkpoint), "--seeds", "4", "--resolution", "20", "--yaw", "0.5",
          "--pitch", "1.3", "--truncation", "0.6", "--ray-step-multiplier", "1", "--out", str(tmp_path / "b")])
    assert np.abs(png(tmp_path / "b/seed0004.png") - png(tmp_path / "seed0004.png")).max() > 0  # fov, radius act


def test_grid_has_a_row_per_seed_and_a_column_per_yaw(checkpoint, tmp_path):
    assert main(["generate", "--checkpoint", str(checkpoint), "--seeds", "0-1", "--grid", "--grid-yaws", "-0.3",
                 "0.3", "--resolution", "12", "--depth", "--normals", "--out", str(tmp_path)]) == 0
    grid = png(tmp_path / "grid.png")
    assert grid.shape == (24, 24, 3)
    for name in ("grid_depth.png", "grid_normals.png"):
        assert png(tmp_path / name).shape == (24, 24, 3)
    main(["generate", "--checkpoint", str(checkpoint), "--seeds", "1", "--yaw", "0.3", "--resolution", "12",
          "--out", str(tmp_path / "single")])
    assert np.abs(grid[12:, 12:] - png(tmp_path / "single/seed0001.png")).max() <= 1


def test_seed_ranges_and_normal_maps(checkpoint, tmp_path):
    assert main(["generate", "--checkpoint", str(checkpoint), "--seeds", "0-1,3", "--resolution", "10",
                 "--batch-size", "2", "--normals", "--out", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "seed0000.png", "seed0000_normals.png", "seed0001.png", "seed0001_normals.png", "seed0003.png",
        "seed0003_normals.png"]
    normals = png(tmp_path / "out/seed0000_normals.png")
    assert normals.shape == (10, 10, 3)
    assert (normals[..., 2] >= 127).all()  # every normal faces the camera: +z in camera space


def test_normals_of_a_plane_facing_the_camera():
    # A wall at distance 2 perpendicular to the view axis: depth along each ray = 2 / cos(angle to the axis).
    fov = torch.tensor([40.0])
    dirs = camera_directions(pixel_grid(9, 9)[None], fov).reshape(1, 9, 9, 3)
    depth = (2.0 / -dirs[..., 2])[:, None]
    normals = depth_normals(depth, fov)
    assert torch.allclose(normals, torch.tensor([0.0, 0.0, 1.0]).reshape(1, 3, 1, 1).expand_as(normals), atol=1e-5)
    # The same wall tilted about the vertical axis (z = −2 + 0.5·x): normal ∝ (−0.5, 0, 1).
    t = 2.0 / (-dirs[..., 2] + 0.5 * dirs[..., 0])
    tilted = depth_normals(t[:, None], fov)[0, :, 4, 4]
    assert torch.allclose(tilted, torch.tensor([-0.5, 0.0, 1.0]) / math.sqrt(1.25), atol=1e-4)


def test_ray_step_multiplier_gives_a_close_but_different_image(checkpoint, tmp_path):
    for k in ("1", "4"):
        assert main(["generate", "--checkpoint", str(checkpoint), "--seeds", "2", "--resolution", "16",
                     "--ray-step-multiplier", k, "--out", str(tmp_path / k)]) == 0
    a, b = png(tmp_path / "1/seed0002.png"), png(tmp_path / "4/seed0002.png")
    assert np.abs(a - b).max() > 0 and np.abs(a - b).mean() < 8


def test_ray_step_view_shares_weights_and_leaves_the_generator_alone(checkpoint):
    G = load_checkpoint(checkpoint).G_ema
    G4 = with_ray_steps(G, 4)
    assert G4.cfg.render.num_ray_steps == 4 * G.cfg.render.num_ray_steps == 32
    assert G4.synthesis is G.synthesis and G4.field is G.field
    assert all(a is b for a, b in zip(G4.parameters(), G.parameters(), strict=True))
    assert with_ray_steps(G, 1) is G
    with pytest.raises(ValueError, match="--ray-step-multiplier must be ≥ 1"):
        with_ray_steps(G, 0)


def test_random_sampling_differs_from_deterministic(checkpoint, tmp_path):
    for d, extra in (("det", []), ("rnd", ["--random"])):
        main(["generate", "--checkpoint", str(checkpoint), "--seeds", "1", "--resolution", "12",
              "--out", str(tmp_path / d), *extra])
    assert np.abs(png(tmp_path / "det/seed0001.png") - png(tmp_path / "rnd/seed0001.png")).max() > 0


@pytest.fixture
def conditional_checkpoint(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_model_config()
    cfg = dataclasses.replace(cfg, generator=dataclasses.replace(cfg.generator, c_dim=3))
    return save_checkpoint(tmp_path / "cond.safetensors", cfg, G_ema=Generator(cfg.generator))


def test_conditional_model_classes(conditional_checkpoint, tmp_path, capsys, caplog):
    base = ["generate", "--checkpoint", str(conditional_checkpoint), "--seeds", "5", "--resolution", "10"]
    with caplog.at_level(logging.INFO):
        assert main([*base, "--out", str(tmp_path / "random")]) == 0  # a random class per seed
    assert f"seed 5 → {seed_classes([5], 16, 3)[0]}" in caplog.text
    for k in ("0", "2"):
        assert main([*base, "--class-index", k, "--out", str(tmp_path / k)]) == 0
    assert np.abs(png(tmp_path / "0/seed0005.png") - png(tmp_path / "2/seed0005.png")).max() > 0
    assert main([*base, "--class-index", "3", "--out", str(tmp_path)]) == 2
    assert "--class-index must be in [0, 3)" in capsys.readouterr().err
