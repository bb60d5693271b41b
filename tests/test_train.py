"""Training: resume replays the uninterrupted run, kills lose at most one snapshot, torchrun ranks agree,
non-finite steps are skipped, options are validated."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from epigraf.checkpoint import load_checkpoint
from epigraf.train.loop import optimizer_step, train
from epigraf.train.options import TrainOptions
from epigraf.train.run_snapshots import latest_snapshot, load_state, resolve_resume
from test_checkpoint import tiny_model_config

REPO = Path(__file__).resolve().parents[1]


def make_dataset(root: Path, n: int = 8, res: int = 32) -> Path:
    rng = np.random.RandomState(0)
    root.mkdir(parents=True, exist_ok=True)
    angles = {}
    for i in range(n):
        Image.fromarray((rng.rand(res, res, 3) * 255).astype(np.uint8)).save(root / f"img{i:03d}.png")
        angles[f"img{i:03d}"] = [float(rng.uniform(-0.4, 0.4)), float(math.pi / 2 + rng.uniform(-0.2, 0.2)), 0.0]
    (root / "dataset.json").write_text(json.dumps({"camera_angles": angles}))
    return root


def options(tmp_path: Path, **kw) -> TrainOptions:
    base = dict(data=str(tmp_path / "data"), out=str(tmp_path / "runs"), batch_size=4, tick_kimg=0.008, kimg=0.016,
                workers=0, snapshot_ticks=1, image_ticks=0, progress=False, r1_interval=2, ada_interval=1,
                videos=False)
    base.update(kw)
    return TrainOptions(**base)


@pytest.fixture
def dataset(tmp_path):
    return make_dataset(tmp_path / "data")


def read_stats(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]


def test_resume_replays_the_uninterrupted_run_step_for_step(tmp_path, dataset):
    model = tiny_model_config()
    full = train(options(tmp_path, run=str(tmp_path / "full")), model)
    half = train(options(tmp_path, run=str(tmp_path / "half"), kimg=0.008), model)
    assert half.cur_nimg == 8
    resumed = train(options(tmp_path, run=str(tmp_path / "half"), resume="latest"), model)
    assert resumed.cur_nimg == full.cur_nimg == 16
    full_stats, resumed_stats = read_stats(full.run_dir), read_stats(resumed.run_dir)
    assert len(full_stats) == len(resumed_stats) == 2
    for key in ("loss/G", "loss/D", "scores/real", "augment/p"):
        assert resumed_stats[1][key] == full_stats[1][key], key
    for a, b in zip(full.G_ema.state_dict().values(), resumed.G_ema.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_snapshot_files_and_run_folder(tmp_path, dataset):
    result = train(options(tmp_path, image_ticks=1, videos=True), tiny_model_config())
    names = sorted(p.name for p in result.run_dir.iterdir())
    assert {"video-0000000008.mp4", "video-0000000016.mp4"} <= set(names) or "video-0000000016.gif" in names
    assert "network-0000000008.safetensors" in names and "training-state-0000000016.pt" in names
    assert {"options.json", "config.json", "stats.jsonl", "reals.png", "fakes-0000000016.png"} <= set(names)
    assert latest_snapshot(result.run_dir)[0].name == "network-0000000016.safetensors"
    assert json.loads((result.run_dir / "config.json").read_text())["name"] == "tiny"


def test_resume_removes_writes_a_kill_cut_short(tmp_path, dataset):
    first = train(options(tmp_path, kimg=0.008), tiny_model_config())
    torn = [first.run_dir / "training-state-0000000012.pt.tmp", first.run_dir / "network-0000000012.safetensors.tmp"]
    for path in torn:
        path.write_bytes(b"cut short")
    assert latest_snapshot(first.run_dir)[0].name == "network-0000000008.safetensors"
    resumed = train(options(tmp_path, run=str(first.run_dir), kimg=0.012, resume="latest"), tiny_model_config())
    assert resumed.cur_nimg == 12 and not any(path.exists() for path in torn)


def test_resuming_an_earlier_snapshot_drops_the_logs_after_it(tmp_path, dataset):
    first = train(options(tmp_path), tiny_model_config())
    assert [s["kimg"] for s in read_stats(first.run_dir)] == [0.008, 0.016]
    metric_log = first.run_dir / "metric-kid.jsonl"
    metric_log.write_text('{"kimg": 0.008, "value": 0.5}\n{"kimg": 0.016, "value": 0.4}\n{"kimg": 0.0')  # torn line
    train(options(tmp_path, resume=str(first.run_dir / "training-state-0000000008.pt"), kimg=0.012),
          tiny_model_config())
    assert [s["kimg"] for s in read_stats(first.run_dir)] == [0.008, 0.012]
    assert [json.loads(line)["kimg"] for line in metric_log.read_text().splitlines()] == [0.008]


def test_tensorboard_logs_each_step_once_across_a_resume(tmp_path, dataset):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    first = train(options(tmp_path, tensorboard=True), tiny_model_config())
    train(options(tmp_path, tensorboard=True, resume=str(first.run_dir / "training-state-0000000008.pt"),
                  kimg=0.012), tiny_model_config())
    events = event_accumulator.EventAccumulator(str(first.run_dir))
    events.Reload()
    assert [e.step for e in events.Scalars("loss/G")] == [8, 12]


def test_transfer_loads_weights_but_restarts_counters(tmp_path, dataset):
    first = train(options(tmp_path, kimg=0.008), tiny_model_config())
    network, _ = latest_snapshot(first.run_dir)
    # Learning rates 0: the one step leaves the weights where they started, which must be the checkpoint's.
    second = train(options(tmp_path, kimg=0.004, transfer=str(network), augment="none", g_lr=0.0, d_lr=0.0),
                   tiny_model_config())
    assert second.cur_nimg == 4 and second.run_dir != first.run_dir
    ckpt = load_checkpoint(network)
    for ours, theirs in ((second.G, ckpt.G), (second.D, ckpt.D)):  # parameters: w_avg moves with every step
        for name, value in theirs.named_parameters():
            assert torch.equal(dict(ours.named_parameters())[name], value), name
    fresh = train(options(tmp_path, kimg=0.004, augment="none", g_lr=0.0, d_lr=0.0), tiny_model_config())
    assert not torch.equal(fresh.D.b4.out.weight, ckpt.D.b4.out.weight)  # the seed alone would not give them


def _script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO / 'tests')!r})
        from test_checkpoint import tiny_model_config
        from epigraf.train.loop import train
        from epigraf.train.options import TrainOptions
        """) + textwrap.dedent(body))
    return path


def test_sigkill_then_resume_loses_at_most_one_snapshot_interval(tmp_path, dataset):
    script = _script(tmp_path, f"""
        opts = TrainOptions(data={str(dataset)!r}, run={str(tmp_path / 'run')!r}, batch_size=4, tick_kimg=0.004,
                            kimg=float(sys.argv[1]), workers=0, snapshot_ticks=1, image_ticks=0, progress=False,
                            resume=sys.argv[2] if len(sys.argv) > 2 else None)
        train(opts, tiny_model_config())
        """)
    proc = subprocess.Popen([sys.executable, str(script), "1000"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    run = tmp_path / "run"
    deadline = time.time() + 120
    while time.time() < deadline and not (run.is_dir() and len(list(run.glob("training-state-*.pt"))) >= 2):
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    network, state = latest_snapshot(run)
    killed_at = int(state.name.split("-")[-1].split(".")[0])
    assert killed_at >= 8
    for complete in run.glob("training-state-*.pt"):  # atomic writes: a kill mid-write leaves only a *.tmp
        load_state(complete)
    done = subprocess.run([sys.executable, str(script), str((killed_at + 8) / 1000), "latest"], capture_output=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert not list(run.glob("*.tmp"))  # resuming removes what a write cut short left
    stats = read_stats(run)
    kimgs = [s["kimg"] for s in stats]
    assert kimgs[-1] == pytest.approx((killed_at + 8) / 1000)
    assert min(k for k in kimgs if k * 1000 > killed_at) * 1000 == killed_at + 4  # resumed right after the snapshot


@pytest.mark.parametrize("workers, whole_group", [(0, False), (2, True)], ids=["process", "process-group"])
def test_sigterm_writes_a_snapshot_and_exits_cleanly(tmp_path, dataset, workers, whole_group):
    """Also when the signal reaches the whole process group (Ctrl-C, `timeout`, schedulers), data workers included."""
    script = _script(tmp_path, f"""
        opts = TrainOptions(data={str(dataset)!r}, run={str(tmp_path / 'run')!r}, batch_size=4, tick_kimg=0.004,
                            kimg=1000.0, workers={workers}, snapshot_ticks=1000, image_ticks=0, progress=False)
        train(opts, tiny_model_config())
        """)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=whole_group)
    run = tmp_path / "run"
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "stats.jsonl").is_file():
        time.sleep(0.2)
    if whole_group:
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0, proc.stderr.read().decode()[-2000:]
    assert latest_snapshot(run) is not None


def test_two_process_torchrun_ranks_hold_identical_weights(tmp_path, dataset):
    script = _script(tmp_path, f"""
        import os, torch
        opts = TrainOptions(data={str(dataset)!r}, run={str(tmp_path / 'run')!r}, batch_size=4, tick_kimg=0.008,
                            kimg=0.016, workers=0, snapshot_ticks=1, image_ticks=0, progress=False, r1_interval=2)
        result = train(opts, tiny_model_config())
        torch.save({{k: v for k, v in result.G.state_dict().items()}} | {{"D." + k: v for k, v in
                    result.D.state_dict().items()}}, {str(tmp_path)!r} + f"/rank{{os.environ['RANK']}}.pt")
        """)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                           "29731", str(script)], capture_output=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    a, b = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert latest_snapshot(tmp_path / "run")[0].name == "network-0000000016.safetensors"


def test_a_non_finite_step_is_skipped_and_never_applied():
    from epigraf.train.distributed import DistEnv

    layer = torch.nn.Linear(3, 1)
    before = [p.detach().clone() for p in layer.parameters()]
    opt = torch.optim.Adam(layer.parameters(), lr=0.1)
    env = DistEnv(0, 1, torch.device("cpu"))
    loss = layer(torch.tensor([[1.0, float("nan"), 0.0]])).sum()
    assert optimizer_step(opt, list(layer.parameters()), loss, env) is False
    assert all(torch.equal(a, b) for a, b in zip(before, layer.parameters(), strict=True))
    assert optimizer_step(opt, list(layer.parameters()), layer(torch.ones(1, 3)).sum(), env) is True
    assert not all(torch.equal(a, b) for a, b in zip(before, layer.parameters(), strict=True))


@pytest.mark.parametrize("kw, message", [
    ({"preset": "ffhq1024"}, "unknown preset 'ffhq1024'"),
    ({"augment": "diffaug"}, "--augment must be 'ada' or 'none'"),
    ({"kimg": 0}, "--kimg must be positive"),
    ({"resolution": -64}, "--resolution must be positive"),
    ({"distortion_weight": -1.0}, "--distortion-weight must be ≥ 0"),
    ({"resume": "latest", "transfer": "x.safetensors"}, "are exclusive"),
])
def test_bad_options_are_rejected(kw, message):
    with pytest.raises(ValueError, match=message):
        TrainOptions(**kw)


def test_resume_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no complete snapshot"):
        resolve_resume("latest", tmp_path, tmp_path)
    with pytest.raises(ValueError, match="training-state-<nimg>.pt"):
        resolve_resume(str(tmp_path / "model.pkl"), None, tmp_path)


def test_dataset_of_the_wrong_resolution_is_refused(tmp_path):
    make_dataset(tmp_path / "data", res=16)
    with pytest.raises(ValueError, match=r"dataset images are 16² but the model \('tiny'\) trains at 32²"):
        train(options(tmp_path), tiny_model_config())


def test_the_builtin_recipe_tells_d_the_camera_and_does_not_mirror():
    """The builtin preset's D is camera-conditioned (drop p 0) and its data unmirrored (options.BUILTIN_RECIPE);
    the paper presets keep the original's defaults; an explicit flag wins over either."""
    builtin = TrainOptions().with_preset_defaults()
    assert (builtin.mirror, builtin.d_camera_cond, builtin.d_camera_cond_drop_p) == (False, True, 0.0)
    paper = TrainOptions(preset="ffhq256").with_preset_defaults()
    assert (paper.mirror, paper.d_camera_cond, paper.d_camera_cond_drop_p) == (True, False, 0.5)
    asked = TrainOptions(mirror=True, d_camera_cond=False).with_preset_defaults()
    assert (asked.mirror, asked.d_camera_cond) == (True, False)
    assert TrainOptions(pose_cond=True).with_preset_defaults().d_camera_cond_drop_p == 0.5  # the original's
    assert TrainOptions(pose_cond=True, d_camera_cond_drop_p=0.2).with_preset_defaults().d_camera_cond_drop_p == 0.2


def test_a_camera_conditioned_d_needs_a_dataset_with_cameras(tmp_path):
    from epigraf.data.dataset import ImageDataset
    from epigraf.train.data_feed import model_config_for

    tiny = tiny_model_config()
    # Cameras of G's own distribution, as the builtin preset's: only D's conditioning needs the dataset's.
    base = dataclasses.replace(tiny, generator=dataclasses.replace(
        tiny.generator, camera=dataclasses.replace(tiny.generator.camera, distribution="spherical_uniform")))
    root = make_dataset(tmp_path / "data")
    (root / "dataset.json").unlink()
    dataset = ImageDataset(root)
    with pytest.raises(ValueError, match="the dataset has no camera_angles in dataset.json; train without it: "
                                         "--no-d-camera-cond"):
        model_config_for(options(tmp_path).with_preset_defaults(), dataset, base)
    with pytest.raises(ValueError, match="--pose-cond conditions G and D on the camera, but the dataset has no"):
        model_config_for(options(tmp_path, pose_cond=True).with_preset_defaults(), dataset, base)
    cfg = model_config_for(options(tmp_path, d_camera_cond=False).with_preset_defaults(), dataset, base)
    assert not cfg.discriminator.camera_cond
    posed = model_config_for(options(tmp_path).with_preset_defaults(), ImageDataset(make_dataset(tmp_path / "posed")),
                             base)
    assert posed.discriminator.camera_cond and posed.discriminator.camera_cond_drop_p == 0.0


def test_d_alpha_trains_a_d_of_four_channels_on_the_datas_coverage(tmp_path):
    root = make_dataset(tmp_path / "data")
    with pytest.raises(ValueError, match="8 images have no alpha channel"):
        train(options(tmp_path, d_alpha=True), tiny_model_config())
    for path in root.glob("*.png"):
        rgb = np.asarray(Image.open(path))
        alpha = np.where(rgb[..., :1] > 128, 255, 0).astype(np.uint8)
        Image.fromarray(np.concatenate([rgb, alpha], axis=2), "RGBA").save(path)
    result = train(options(tmp_path, d_alpha=True, kimg=0.008), tiny_model_config())
    checkpoint = load_checkpoint(latest_snapshot(result.run_dir)[0])
    assert checkpoint.config.discriminator.img_channels == 4
    assert checkpoint.D.b32.fromrgb.weight.shape[1] == 4
    assert TrainOptions().with_preset_defaults().d_alpha is False


def test_resolution_option_trains_the_preset_at_another_image_size(tmp_path):
    make_dataset(tmp_path / "data", res=64)
    result = train(options(tmp_path, resolution=64, kimg=0.004, augment="none"), tiny_model_config())
    cfg = load_checkpoint(latest_snapshot(result.run_dir)[0]).config
    assert cfg.generator.image_resolution == cfg.discriminator.image_resolution == cfg.patch.image_resolution == 64
    assert cfg.patch.min_scale == cfg.patch.resolution / 64
    native = tiny_model_config().discriminator
    assert cfg.discriminator.num_additional_start_blocks == native.num_additional_start_blocks + 1
    with pytest.raises(ValueError, match="image resolution must be a power of two ≥ the 16² patches, got 48"):
        train(options(tmp_path, resolution=48), tiny_model_config())


def test_cli_train_runs_and_reports_errors(tmp_path, dataset, capsys):
    from epigraf.cli import main

    assert main(["train", "--preset", "ffhq256", "--data", str(dataset), "--out", str(tmp_path / "r"),
                 "--workers", "0", "--no-progress"]) == 2
    assert "dataset images are 32² but the model ('ffhq256') trains at 256²" in capsys.readouterr().err


@pytest.mark.parametrize(("nimg", "message"), [(120_000, "finished 120 kimg"), (5_120, "stopped at 5.12 of 120 kimg")])
def test_cli_train_without_kimg_reports_against_the_presets_length(tmp_path, monkeypatch, caplog, nimg, message):
    """The README's first command gives no --kimg: its end-of-run line compares with the preset's 120 kimg."""
    import logging

    import epigraf.train.loop as loop
    from epigraf.cli import main
    from epigraf.train.loop import TrainResult

    monkeypatch.setattr(loop, "train", lambda opts: TrainResult(tmp_path, None, None, None, nimg, 0))
    with caplog.at_level(logging.INFO, logger="epigraf.commands.train"):
        assert main(["train", "--out", str(tmp_path)]) == 0
    assert message in caplog.text


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN:UserWarning")
@pytest.mark.parametrize("onednn", [True, False], ids=["onednn", "native-kernels"])
def test_bf16_autocast_trains_and_snapshots_fp32_weights(tmp_path, dataset, onednn):
    """With oneDNN off, the CPU runs PyTorch's native kernels, as CPUs without AVX-512 do, which refuse mixed
    dtypes (a bf16 gradient with an fp32 filter crashed `train --bf16` there): tests/test_mixed_dtypes.py."""
    with torch.backends.mkldnn.flags(enabled=onednn):
        result = train(options(tmp_path, kimg=0.008, bf16=True, augment="none"), tiny_model_config())
    assert result.cur_nimg == 8 and result.skipped_steps == 0
    assert all(p.dtype == torch.float32 for p in result.G.parameters())


@pytest.mark.slow
def test_torch_compile_trains(tmp_path, dataset):
    result = train(options(tmp_path, kimg=0.008, compile=True, augment="none"), tiny_model_config())
    assert result.cur_nimg == 8 and result.skipped_steps == 0


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_fid_is_measured_every_metrics_interval(tmp_path, dataset):
    from test_fid import save_tiny_detector

    detector = save_tiny_detector(tmp_path / "detector.pt")
    result = train(options(tmp_path, metrics_ticks=1, metrics_fakes=8, detector=str(detector)), tiny_model_config())
    records = [json.loads(line) for line in (result.run_dir / "metric-fid2k_full.jsonl").read_text().splitlines()]
    assert [r["kimg"] for r in records] == [0.008, 0.016]
    assert all(math.isfinite(r["value"]) and r["value"] >= 0 for r in records)
    assert "8 fakes" in records[0]["protocol"]


def test_d_wrong_camera_weight_trains_a_matching_aware_d_and_needs_a_camera_conditioned_one(tmp_path, dataset):
    with pytest.raises(ValueError, match="must be ≥ 0"):
        TrainOptions(d_wrong_camera_weight=-0.5)
    with pytest.raises(ValueError, match="need a camera-conditioned D"):
        train(options(tmp_path, d_wrong_camera_weight=0.5, d_camera_cond=False), tiny_model_config())
    with pytest.raises(ValueError, match="≥ 2 images a batch per process, got 1"):
        train(options(tmp_path, d_wrong_camera_weight=0.5, d_camera_cond=True, batch_size=1), tiny_model_config())
    assert not (tmp_path / "runs").exists()  # refused before a run folder was made
    result = train(options(tmp_path, d_wrong_camera_weight=0.5, d_camera_cond=True, kimg=0.008,
                           run=str(tmp_path / "matching")), tiny_model_config())
    stats = read_stats(result.run_dir)[-1]
    assert math.isfinite(stats["scores/real_wrong_camera"])
    assert TrainOptions().with_preset_defaults().d_wrong_camera_weight == 0.0
    assert json.loads((result.run_dir / "options.json").read_text())["d_wrong_camera_weight"] == 0.5
