"""``epigraf generate``: images of the requested size from a checkpoint or a preset, clear flag errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from epigraf.checkpoint import save_checkpoint
from epigraf.cli import main
from epigraf.nn.generator import Generator
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
])
def test_bad_flags_give_one_clear_error(checkpoint, tmp_path, capsys, args, message):
    assert main(["generate", "--checkpoint", str(checkpoint), "--out", str(tmp_path), *args]) == 2
    assert message in capsys.readouterr().err


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["generate", "--checkpoint", str(tmp_path / "x.safetensors")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
