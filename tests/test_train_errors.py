"""Training ends promptly, with one line and a non-zero code, on every error: data workers never keep the
trainer waiting, a failed snapshot leaves no half pair, a full disk is named as such."""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from epigraf.train.loop import train
from epigraf.train.loss import PatchGANLoss
from epigraf.train.options import TrainOptions
from epigraf.train.run_snapshots import latest_snapshot, network_path, state_path, write_snapshot
from test_checkpoint import tiny_model_config
from test_train import make_dataset, read_stats

REPO = Path(__file__).resolve().parents[1]
# A run that fails must be done well within this, on a loaded 2-core machine, workers included.
EXIT_TIMEOUT_S = 150
TORCH_DISK_FULL = "[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"


def cli_script(tmp_path: Path, prelude: str = "") -> Path:
    """``python script.py ARGS`` = ``epigraf ARGS`` with every preset replaced by the tests' tiny model."""
    path = tmp_path / "cli.py"
    path.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO / 'tests')!r})
        import torch
        from test_checkpoint import tiny_model_config
        import epigraf.train.loop as loop
        loop.preset = lambda name: tiny_model_config()
        """) + textwrap.dedent(prelude) + "from epigraf.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    return path


def train_args(data: Path, run: Path, workers: int, snapshot_ticks: int) -> list[str]:
    return ["train", "--data", str(data), "--run", str(run), "--batch-size", "4", "--tick-kimg", "0.004",
            "--kimg", "1000", "--workers", str(workers), "--snapshot-ticks", str(snapshot_ticks),
            "--image-ticks", "0", "--metrics-ticks", "0", "--augment", "none", "--no-progress"]


def wait_for(condition, timeout_s: float = 120) -> None:
    deadline = time.time() + timeout_s
    while not condition():
        assert time.time() < deadline, "training did not start"
        time.sleep(0.2)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    """(exit code, stderr) of ``proc``, which must exit by itself within EXIT_TIMEOUT_S and leave no process of
    its group (data workers) behind; on a hang the whole group is killed and the test fails."""
    try:
        _, err = proc.communicate(timeout=EXIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"training hung for {EXIT_TIMEOUT_S} s after the error")
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("a data worker outlived the trainer")
    return proc.returncode, err.decode()


@pytest.fixture
def data(tmp_path):
    return make_dataset(tmp_path / "data")


def test_a_corrupt_image_mid_run_ends_training_with_data_workers(tmp_path, data):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(cli_script(tmp_path)), *train_args(data, run, 2, 1000)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    wait_for(lambda: (run / "stats.jsonl").is_file() or proc.poll() is not None)
    for image in data.glob("*.png"):
        image.write_bytes(b"not a png")
    code, err = finish(proc)
    assert code == 2, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("epigraf train: error: cannot decode image 'img00"), err[-2000:]
    assert "Traceback" not in err


def test_a_failed_snapshot_write_ends_training_with_data_workers(tmp_path, data):
    run = tmp_path / "run"
    script = cli_script(tmp_path, f"""
        def disk_full(*args, **kwargs):
            raise RuntimeError({TORCH_DISK_FULL!r})
        torch.save = disk_full
        """)
    proc = subprocess.Popen([sys.executable, str(script), *train_args(data, run, 2, 1)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    code, err = finish(proc)
    assert code == 1, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("epigraf train: error: ") and "no space left on device (needed ~" in last, err[-2000:]
    assert str(run / "network-0000000004.safetensors") in last
    assert "Traceback" not in err
    assert not list(run.glob("network-*")) and latest_snapshot(run) is None


def write_tiny_snapshot(run_dir: Path, needed_bytes: int = 16) -> None:
    write_snapshot(run_dir, 8, lambda path: path.write_bytes(b"weights"), {"step": torch.zeros(2)}, needed_bytes)


def test_a_snapshot_that_cannot_fit_is_refused_before_writing(tmp_path, monkeypatch):
    monkeypatch.setattr("epigraf.files.free_bytes", lambda folder: 3 * 2**20)
    with pytest.raises(OSError, match=r"no space left on device \(needed ~50\.0 MB at .*network-0000000008"
                                      r"\.safetensors, 3\.0 MB free\)") as raised:
        write_tiny_snapshot(tmp_path, needed_bytes=50 * 2**20)
    assert raised.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("failure, message", [
    (RuntimeError(TORCH_DISK_FULL), r"no space left on device \(needed ~0\.0 MB at .*network-0000000008"),
    (OSError(errno.ENOSPC, "No space left on device"), "no space left on device"),
    (PermissionError(errno.EACCES, "Permission denied"), r"cannot write the snapshot training-state-0000000008"
                                                         r"\.pt in .*: \[Errno 13\] Permission denied"),
], ids=["torch-short-write", "enospc", "permission"])
def test_a_failed_state_write_leaves_no_network_without_its_state(tmp_path, monkeypatch, failure, message):
    def fail(state, path):
        raise failure

    monkeypatch.setattr(torch, "save", fail)
    with pytest.raises(OSError, match=message):
        write_tiny_snapshot(tmp_path)
    assert not network_path(tmp_path, 8).exists() and not state_path(tmp_path, 8).exists()
    assert list(tmp_path.iterdir()) == []


def quick_options(tmp_path: Path, **kw) -> TrainOptions:
    base = dict(data=str(tmp_path / "data"), run=str(tmp_path / "run"), batch_size=4, tick_kimg=0.008, kimg=0.016,
                workers=0, snapshot_ticks=1, image_ticks=0, metrics_ticks=0, progress=False, augment="none")
    return TrainOptions(**{**base, **kw})


def test_an_existing_run_folder_is_refused_without_resume_or_force(tmp_path, data):
    first = train(quick_options(tmp_path, kimg=0.008), tiny_model_config())
    before = {p.name: p.read_bytes() for p in first.run_dir.iterdir()}
    with pytest.raises(ValueError, match=rf"the run folder {tmp_path / 'run'} already holds a run \(\d+ files, e\.g\. "
                                         r".*\): pass --resume latest to continue it, --force to start afresh"):
        train(quick_options(tmp_path, seed=1), tiny_model_config())
    assert {p.name: p.read_bytes() for p in first.run_dir.iterdir()} == before
    (first.run_dir / "network-0000999996.safetensors").write_bytes(b"a stale snapshot")
    (first.run_dir / "notes.txt").write_text("the user's own file")
    fresh = train(quick_options(tmp_path, seed=1, kimg=0.004, force=True), tiny_model_config())
    names = {p.name for p in fresh.run_dir.iterdir()}
    assert "network-0000999996.safetensors" not in names and "network-0000000008.safetensors" not in names
    assert {"notes.txt", "network-0000000004.safetensors"} <= names
    assert [r["kimg"] for r in read_stats(fresh.run_dir)] == [0.004]
    with pytest.raises(ValueError, match="--force .* and --resume .* are exclusive"):
        quick_options(tmp_path, force=True, resume="latest")


def test_resuming_with_changed_options_warns_and_keeps_the_original_record(tmp_path, data, caplog):
    train(quick_options(tmp_path, kimg=0.008), tiny_model_config())
    original = (tmp_path / "run" / "options.json").read_text()
    with caplog.at_level(logging.WARNING, logger="epigraf.train.run_log"):
        train(quick_options(tmp_path, resume="latest", batch_size=8, g_lr=0.001, seed=3, workers=1),
              tiny_model_config())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "batch_size 4 → 8, seed 0 → 3, g_lr 0.0025 → 0.001" in warnings[0] and "workers" not in warnings[0]
    assert (tmp_path / "run" / "options.json").read_text() == original
    resumed = json.loads((tmp_path / "run" / "options-resumed-0000000008.json").read_text())
    assert resumed["batch_size"] == 8 and resumed["resume"] == "latest"


def test_resuming_with_options_that_change_the_model_names_the_difference(tmp_path, data):
    """A run of the builtin recipe before its D was camera-conditioned, resumed with today's defaults: the error
    names each config field that differs and where the run's own options are."""
    train(quick_options(tmp_path, kimg=0.008, d_camera_cond=False, d_camera_cond_drop_p=0.5), tiny_model_config())
    with pytest.raises(ValueError, match=r"different model config than these options give \(discriminator\."
                                         r"camera_cond: False → True; discriminator\.camera_cond_drop_p: 0\.5 → 0\.0\)"
                                         r"; give the options the run was trained with \(its options\.json\)"):
        train(quick_options(tmp_path, resume="latest"), tiny_model_config())


def test_a_run_of_non_finite_steps_warns_then_stops_at_the_stated_limit(tmp_path, data, monkeypatch, caplog):
    real_loss = PatchGANLoss.generator_loss

    def nan_loss(self, fake, kimg):
        result = real_loss(self, fake, kimg)
        return dataclasses.replace(result, loss=result.loss * math.nan, stats={**result.stats, "loss/G": math.nan})

    monkeypatch.setattr(PatchGANLoss, "generator_loss", nan_loss)
    with caplog.at_level(logging.WARNING, logger="epigraf.train.loop"), \
            pytest.raises(ValueError, match=r"training diverged: the last 3 steps \(to step 3\) all had a non-finite "
                                            r"loss or gradient.*--max-skipped-in-a-row"):
        train(quick_options(tmp_path, tick_kimg=0.004, kimg=1.0, max_skipped_in_a_row=3), tiny_model_config())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "tick 1: 1 of its 1 steps were skipped (non-finite loss or gradient); training stops after 3 in a row" \
        in warnings
    lines = (tmp_path / "run" / "stats.jsonl").read_text().splitlines()
    records = [json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} is not JSON")) for line in lines]
    assert records[0]["loss/G"] is None and records[0]["progress/skipped_steps"] == 1


def test_train_data_warnings_are_log_lines_and_a_cut_short_image_stops_before_the_run_folder(tmp_path, caplog,
                                                                                           capsys):
    """`train --data` printed Python's "loop.py:91: DatasetWarning: …" with the source line under it, and a file cut
    short stopped the run only after its folder was made."""
    from epigraf.cli import main

    data = make_dataset(tmp_path / "data")
    meta = json.loads((data / "dataset.json").read_text())
    meta["camera_angles"] = {k: [0.5, math.pi / 2, 0.0] for k in meta["camera_angles"]}  # yaw not zero-centred
    (data / "dataset.json").write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING):
        assert main(["train", "--data", str(data), "--out", str(tmp_path / "runs"), "--no-progress"]) == 2
    warned = [r for r in caplog.records if r.name == "epigraf.data.dataset"]
    assert len(warned) == 1 and "not zero-centred" in warned[0].getMessage()
    assert "DatasetWarning" not in capsys.readouterr().err
    image = data / "img003.png"
    image.write_bytes(image.read_bytes()[:200])
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "runs"), "--no-progress"]) == 2
    assert "1 images cannot be read: 'img003.png' (OSError: the file ends before" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
