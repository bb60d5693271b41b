"""What a user sees while long commands run: progress bars with ETA, early grids of fakes, clean log lines."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
import sys

import pytest
import torch

from epigraf.checkpoint import save_checkpoint
from epigraf.cli import main
from epigraf.nn.generator import Generator
from epigraf.progress import bar_can_draw, kimg_bar_format, track
from epigraf.train.loop import train
from epigraf.train.run_log import RunLogger
from epigraf.train.visualize import FakesSchedule
from test_checkpoint import tiny_model_config
from test_fid import save_tiny_detector
from test_train import make_dataset, options

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    cfg = tiny_model_config()
    return save_checkpoint(tmp_path_factory.mktemp("net") / "net.safetensors", cfg, G_ema=Generator(cfg.generator))


def test_track_yields_every_batch_and_counts_items(capsys):
    batches = [[1, 2, 3], [4, 5, 6], [7]]
    assert list(track(batches, 7, "counting", "item")) == batches
    err = capsys.readouterr().err
    assert "counting" in err and "7/7" in err and "item" in err


def test_track_can_be_silenced(capsys):
    assert list(track([[1], [2]], 2, "quiet", enabled=False)) == [[1], [2]]
    assert capsys.readouterr().err == ""


def test_fakes_schedule_follows_the_clock_in_the_first_hour_then_the_ticks():
    minute = 60.0
    s = FakesSchedule(every_ticks=50, every_minutes=10, start=0.0, last=0.0)
    assert not s.due(1, 9 * minute)
    assert s.due(2, 10 * minute)
    s.last = 10 * minute
    assert not s.due(3, 19 * minute) and s.due(4, 21 * minute)
    s.last = 55 * minute
    assert not s.due(9, 66 * minute)  # past the first hour: only every 50 ticks
    assert s.due(50, 66 * minute) and s.due(100, 500 * minute)
    assert not FakesSchedule(every_ticks=50, every_minutes=0, start=0.0).due(1, 30 * minute)
    assert not FakesSchedule(every_ticks=0, every_minutes=10, start=0.0).due(50, 30 * minute)
    assert s.on_tick(100) and not s.on_tick(4)  # only tick-based grids come with a video


# (images shown, with a video): no video at start or with an off-schedule snapshot; one at the end.
@pytest.mark.parametrize(("image_ticks", "kimg", "grids_at"),
                         [(1000, 0.012, [(0, False), (8, False), (12, True)]), (0, 0.004, [])])
def test_training_writes_a_grid_at_start_and_with_every_snapshot(tmp_path, monkeypatch, image_ticks, kimg, grids_at):
    """Ticks of 4 images, a snapshot every 2 ticks and at the end; tick-based grids never (every 1000 ticks), or
    no grids at all (0). Grids are recorded, not rendered: test_train checks the files."""
    written = []
    monkeypatch.setattr(RunLogger, "save_fakes",
                        lambda self, G_ema, dataset, cfg, cur_nimg, video: written.append((cur_nimg, video)))
    make_dataset(tmp_path / "data")
    train(options(tmp_path, tick_kimg=0.004, kimg=kimg, image_ticks=image_ticks, snapshot_ticks=2),
          tiny_model_config())
    assert written == grids_at


def test_resuming_says_from_which_state_and_kimg(tmp_path, caplog):
    make_dataset(tmp_path / "data")
    first = train(options(tmp_path, kimg=0.008), tiny_model_config())
    with caplog.at_level(logging.INFO, logger="epigraf.train.loop"):
        train(options(tmp_path, run=str(first.run_dir), kimg=0.016, resume="latest"), tiny_model_config())
    assert "resuming from training-state-0000000008.pt at 0.008 kimg (tick 1)" in caplog.messages


def test_video_shows_frame_progress(checkpoint, tmp_path, capsys):
    assert main(["video", "--checkpoint", str(checkpoint), "--device", "cpu", "--seeds", "0", "--frames", "3",
                 "--format", "frames", "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert re.search(r"seed0000_front_circle: 100%.*3/3 \[", err)


def test_metrics_show_progress_for_reals_fakes_and_consistency(checkpoint, tmp_path, capsys):
    data = make_dataset(tmp_path / "data", n=6)
    assert main(["metrics", str(checkpoint), "--data", str(data), "--detector", str(save_tiny_detector(
        tmp_path / "detector.pt")), "--metrics", "fid2k_full,consistency", "--cameras", "random", "--num", "4",
                 "--consistency-latents", "2", "--no-cache", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"real-image features: 100%.*6/6 \[", err)
    assert re.search(r"fid2k_full fakes \(random cameras\): 100%.*4/4 \[", err)
    assert re.search(r"consistency \(random cameras\): 100%.*2/2 \[", err)


def test_log_lines_print_above_the_training_bar_not_onto_it(tmp_path):
    """`epigraf train` logs a snapshot while its bar is on screen: the line must start a line of its own."""
    make_dataset(tmp_path / "data", res=64)
    proc = subprocess.run(
        [sys.executable, "-m", "epigraf.cli", "train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "r"),
         "--batch-size", "2", "--kimg", "0.002", "--workers", "0", "--image-ticks", "0", "--device", "cpu"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "INFO: snapshot network-0000000002.safetensors" in proc.stderr
    assert not re.search(r"[^\r\n]INFO:", proc.stderr), proc.stderr[-2000:]
    assert "finished 0.002 kimg" in proc.stderr and proc.stdout == ""
    assert "0.002/0.002 kimg" in proc.stderr  # --kimg 0.02 once showed 0.00/0 kimg


def test_kimg_bar_shows_as_many_decimals_as_the_total_needs():
    assert "{n:.2f}/{total:g} kimg" in kimg_bar_format(0.02)
    assert "{n:.3f}/{total:g} kimg" in kimg_bar_format(0.008)
    assert "{n:.2f}/{total:g} kimg" in kimg_bar_format(120)


@contextlib.contextmanager
def _terminal(columns: int):
    """A pseudo-terminal reporting ``columns`` columns, as a text stream."""
    import fcntl
    import struct
    import termios

    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    try:
        with os.fdopen(follower, "w") as tty:
            yield tty
    finally:
        os.close(leader)


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals")
def test_a_terminal_of_zero_columns_cannot_draw_a_bar(tmp_path):
    for columns, can in ((0, False), (80, True)):
        with _terminal(columns) as tty:
            assert bar_can_draw(tty) is can
    with (tmp_path / "log.txt").open("w") as file:
        assert bar_can_draw(file)  # not a terminal: tqdm writes its lines there


def test_where_no_bar_can_draw_progress_is_a_log_line(tmp_path, monkeypatch, caplog, capsys):
    import epigraf.progress as progress
    import epigraf.train.run_log as run_log

    monkeypatch.setattr(progress, "bar_can_draw", lambda stream=None: False)
    monkeypatch.setattr(run_log, "bar_can_draw", lambda stream=None: False)
    with caplog.at_level(logging.INFO):
        assert list(track([[1, 2], [3, 4], [5]], 5, "counting", "item")) == [[1, 2], [3, 4], [5]]
        make_dataset(tmp_path / "data")
        train(options(tmp_path, progress=True), tiny_model_config())
    lines = [r.getMessage() for r in caplog.records]
    assert ["counting: 2/5 item", "counting: 4/5 item", "counting: 5/5 item"] == [
        m for m in lines if m.startswith("counting")]
    ticks = [m for m in lines if m.startswith("tick ")]  # one per tick, with the progress the bar would show
    assert [m.split(", ")[0] for m in ticks] == ["tick 1: 0.008/0.016 kimg", "tick 2: 0.016/0.016 kimg"]
    assert all(" s/kimg, " in m and " img/s, loss/G=" in m for m in ticks)
    assert "kimg" not in capsys.readouterr().err
