"""Videos: files that read back with the right frame count (GIF, PNG frames, MP4 with the extra), camera-path,
grid and W-interpolation videos from a tiny model, tri-planes computed once per latent, clear extra errors."""

from __future__ import annotations

import importlib.util
import logging

import numpy as np
import pytest
import torch
from PIL import Image

import epigraf.export.video as video
from epigraf.cameras.paths import orbit
from epigraf.checkpoint import save_checkpoint
from epigraf.cli import main
from epigraf.export.video import resolve_format, write_video
from epigraf.inference import render_batches
from epigraf.nn.generator import Generator
from epigraf.seeds import seeds_to_ws
from test_checkpoint import tiny_model_config

HAS_FFMPEG = importlib.util.find_spec("imageio_ffmpeg") is not None


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    cfg = tiny_model_config()
    return save_checkpoint(tmp_path_factory.mktemp("net") / "net.safetensors", cfg, G_ema=Generator(cfg.generator))


def random_frames(n: int, h: int = 10, w: int = 14) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def gif_frames(path) -> list[np.ndarray]:
    with Image.open(path) as im:
        out = []
        for i in range(im.n_frames):
            im.seek(i)
            out.append(np.asarray(im.convert("RGB")))
        return out


def test_gif_reads_back_with_every_frame(tmp_path):
    path = write_video(random_frames(7), tmp_path / "a.gif", fps=20)
    frames = gif_frames(path)
    assert len(frames) == 7 and frames[0].shape == (10, 14, 3)
    with Image.open(path) as im:
        assert im.info["duration"] == 50


def test_png_frames_read_back_exactly(tmp_path):
    frames = random_frames(5)
    folder = write_video(frames, tmp_path / "clip", fps=30)
    files = sorted(folder.glob("frame_*.png"))
    assert [f.name for f in files] == [f"frame_{i:04d}.png" for i in range(5)]
    assert all(np.array_equal(np.asarray(Image.open(f)), x) for f, x in zip(files, frames, strict=True))


@pytest.mark.skipif(not HAS_FFMPEG, reason="MP4 needs the optional video extra (imageio-ffmpeg), not installed")
def test_mp4_reads_back_with_every_frame(tmp_path):
    import imageio_ffmpeg

    path = write_video(random_frames(9, 16, 20), tmp_path / "a.mp4", fps=10)
    n_frames, seconds = imageio_ffmpeg.count_frames_and_secs(str(path))
    assert n_frames == 9 and seconds == pytest.approx(0.9, abs=0.11)


def test_missing_extra_is_a_clear_error_and_auto_falls_back(monkeypatch, caplog):
    monkeypatch.setattr(video, "mp4_available", lambda: False)
    with pytest.raises(ValueError, match=r"epigraf\[video\]"):
        resolve_format("mp4")
    with pytest.raises(ValueError, match=r"epigraf\[video\]"):
        write_video(random_frames(2), "x.mp4")
    with caplog.at_level(logging.WARNING):
        assert resolve_format("auto") == "gif"
    assert "imageio-ffmpeg is not installed" in caplog.text
    assert resolve_format("frames") == "frames"


def test_cli_mp4_without_the_extra_fails_before_rendering(checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(video, "mp4_available", lambda: False)
    assert main(["video", "--checkpoint", str(checkpoint), "--format", "mp4", "--out", str(tmp_path)]) == 2
    assert "pip install 'epigraf[video]'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_triplanes_are_synthesised_once_per_latent(checkpoint, monkeypatch):
    from epigraf.checkpoint import load_checkpoint

    G = load_checkpoint(checkpoint).G_ema
    calls = []
    synthesize = G.synthesize
    monkeypatch.setattr(G, "synthesize", lambda ws, noise_mode="const": calls.append(len(ws)) or synthesize(ws))
    outs = list(render_batches(G, seeds_to_ws(G, [0]), orbit(5), resolution=8, batch_size=2))
    assert calls == [1]
    assert [o.image.shape[0] for o in outs] == [2, 2, 1]


def test_cli_path_video_has_the_requested_frames_and_size(checkpoint, tmp_path):
    assert main(["video", "--checkpoint", str(checkpoint), "--seeds", "3", "--path", "orbit", "--frames", "6",
                 "--resolution", "12", "--format", "gif", "--fps", "12", "--out", str(tmp_path)]) == 0
    frames = gif_frames(tmp_path / "seed0003_orbit.gif")
    assert len(frames) == 6 and frames[0].shape == (12, 12, 3)


def test_cli_interpolation_video_starts_and_ends_at_the_seeds(checkpoint, tmp_path):
    common = ["--checkpoint", str(checkpoint), "--resolution", "10", "--ray-step-multiplier", "1"]
    assert main(["video", *common, "--seeds", "1,2", "--interp", "--frames", "4", "--path", "line",
                 "--format", "frames", "--out", str(tmp_path / "v")]) == 0
    files = sorted((tmp_path / "v" / "interp_line").glob("*.png"))
    assert len(files) == 5  # 4 per transition + the last seed
    frames = [np.asarray(Image.open(f)).astype(int) for f in files]
    # The `line` path starts at yaw −0.5 and ends at +0.5 (pitch π/2): the ends are the seeds themselves.
    for seed, yaw, frame in ((1, "-0.5", frames[0]), (2, "0.5", frames[-1])):
        assert main(["generate", *common, "--seeds", str(seed), "--yaw", yaw, "--out", str(tmp_path / "g")]) == 0
        assert np.abs(np.asarray(Image.open(tmp_path / "g" / f"seed{seed:04d}.png")).astype(int) - frame).max() <= 1
    assert np.abs(frames[2] - frames[0]).max() > 0 and np.abs(frames[2] - frames[-1]).max() > 0


def test_cli_grid_video_tiles_the_seeds(checkpoint, tmp_path):
    assert main(["video", "--checkpoint", str(checkpoint), "--seeds", "0-2", "--grid", "2", "--frames", "3",
                 "--resolution", "8", "--format", "frames", "--out", str(tmp_path)]) == 0
    files = sorted((tmp_path / "grid_front_circle").glob("*.png"))
    assert len(files) == 3
    grid = np.asarray(Image.open(files[0]))
    assert grid.shape == (16, 16, 3)
    assert (grid[8:, 8:] == 0).all()  # three videos in a 2 × 2 grid: the last cell is empty


def test_cli_rejects_bad_video_flags(checkpoint, tmp_path, capsys):
    base = ["video", "--checkpoint", str(checkpoint), "--format", "gif", "--out", str(tmp_path)]
    assert main([*base, "--interp", "--seeds", "1"]) == 2
    assert "--interp needs at least two seeds" in capsys.readouterr().err
    assert main([*base, "--grid", "2", "--interp"]) == 2
    assert "do not combine" in capsys.readouterr().err
