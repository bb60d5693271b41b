"""A checkpoint is checked before its networks are allocated or used: bad metadata JSON and config fields
name the file and the field, an oversized config is refused before allocation, NaN/Inf weights name the
tensor, and an unexpected dtype is refused (integers) or converted with a notice (other floats)."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from epigraf.checkpoint import load_checkpoint, save_checkpoint
from epigraf.cli import main
from epigraf.nn.generator import Generator
from test_checkpoint import tiny_model_config


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    torch.manual_seed(0)
    cfg = tiny_model_config()
    return save_checkpoint(tmp_path / "net.safetensors", cfg, G_ema=Generator(cfg.generator))


def rewrite(path: Path, out: Path, tensors=None, **metadata: str) -> Path:
    """A copy of checkpoint ``path`` with edited tensors (a function of the dict) and metadata fields."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    loaded = load_file(str(path))
    save_file(tensors(loaded) if tensors else loaded, str(out), metadata={**meta, **metadata})
    return out


def edited_config(path: Path, section: str, **fields) -> str:
    with safe_open(str(path), framework="pt") as f:
        config = json.loads(f.metadata()["config"])
    config[section].update(fields)
    return json.dumps(config)


def test_non_finite_weights_name_the_tensor_and_generate_refuses(checkpoint, tmp_path, capsys):
    def poison(t):
        t["G_ema.mapping.fc0.weight"][0, 0] = float("nan")
        t["G_ema.mapping.fc1.bias"][0] = float("inf")
        return t

    bad = rewrite(checkpoint, tmp_path / "nan.safetensors", poison)
    with pytest.raises(ValueError, match=r"nan\.safetensors G_ema: non-finite weights \(NaN or Inf\) in "
                                         r"mapping\.fc0\.weight, mapping\.fc1\.bias; the file is corrupt"):
        load_checkpoint(bad)
    assert main(["generate", "--checkpoint", str(bad), "--seeds", "0", "--out", str(tmp_path / "out")]) == 2
    assert "non-finite weights" in capsys.readouterr().err
    assert not list(tmp_path.glob("out/*.png"))


def test_integer_weights_are_refused_and_half_precision_is_converted_with_a_notice(checkpoint, tmp_path, caplog):
    ints = rewrite(checkpoint, tmp_path / "int.safetensors",
                   lambda t: {**t, "G_ema.mapping.fc0.weight": t["G_ema.mapping.fc0.weight"].to(torch.int32)})
    with pytest.raises(ValueError, match=r"G_ema: tensors of the wrong type: mapping\.fc0\.weight \(torch\.int32, "
                                         r"model torch\.float32\)"):
        load_checkpoint(ints)
    half = rewrite(checkpoint, tmp_path / "half.safetensors", lambda t: {k: v.half() for k, v in t.items()})
    with caplog.at_level(logging.INFO, logger="epigraf.checkpoint"):
        loaded = load_checkpoint(half)
    assert all(p.dtype == torch.float32 for p in loaded.G_ema.parameters())
    assert any("converting" in r.getMessage() and "torch.float16" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("field, value, message", [
    ("config", "{bad json", r"metadata field 'config' is not valid JSON \(Expecting property name"),
    ("metadata", "[1,", r"metadata field 'metadata' is not valid JSON"),
    ("metadata", "[1, 2]", r"metadata field 'metadata' must be a JSON object"),
])
def test_bad_metadata_json_names_the_file_and_the_field(checkpoint, tmp_path, field, value, message):
    bad = rewrite(checkpoint, tmp_path / "bad.safetensors", **{field: value})
    with pytest.raises(ValueError, match=rf"bad\.safetensors.*{message}"):
        load_checkpoint(bad)


@pytest.mark.parametrize("fields, message", [
    ({"z_dim": -5}, r"config field generator\.z_dim must be a whole number ≥ 0, got -5"),
    ({"z_dim": "abc"}, r"config field generator\.z_dim must be a whole number ≥ 0, got 'abc'"),
    ({"use_noise": "yes"}, r"config field generator\.use_noise must be true or false"),
    ({"mean_camera_pose": [0.0, 1.0]}, r"config field generator\.mean_camera_pose must be a list of 3 numbers"),
])
def test_bad_config_values_name_the_field(checkpoint, tmp_path, fields, message):
    bad = rewrite(checkpoint, tmp_path / "bad.safetensors", config=edited_config(checkpoint, "generator", **fields))
    with pytest.raises(ValueError, match=rf"bad\.safetensors: the stored config is unreadable: {message}"):
        load_checkpoint(bad)


def test_an_oversized_config_is_refused_before_allocation(checkpoint, tmp_path):
    huge = rewrite(checkpoint, tmp_path / "huge.safetensors",
                   config=edited_config(checkpoint, "generator", mlp_hidden=100000, mlp_layers=4))
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"huge\.safetensors: the config describes a G of [\d,]+ M parameters "
                                         r"\([\d,.]+ GiB\), over the 537 M this reader accepts"):
        load_checkpoint(huge)
    assert time.perf_counter() - start < 1.0


def test_a_tensor_that_does_not_fit_the_config_is_refused_before_allocation(checkpoint, tmp_path):
    cfg = dataclasses.asdict(tiny_model_config())
    cfg["generator"]["mlp_hidden"] = 48  # the stored weights are for the tiny model's hidden width
    bad = rewrite(checkpoint, tmp_path / "bad.safetensors", config=json.dumps(cfg))
    with pytest.raises(ValueError, match=r"bad\.safetensors G_ema state dict does not fit the model — mis-shaped "
                                         r"keys: .*mlp"):
        load_checkpoint(bad)
