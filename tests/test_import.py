"""`epigraf import` and `epigraf.compat.importer`: the original's checkpoints → ours, executing nothing."""

from __future__ import annotations

import json
import pickle
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import test_snapshot as ts
from conftest import rel_err
from epigraf.checkpoint import load_checkpoint
from epigraf.cli import main
from epigraf.compat.hyperparameters import snapshot_hyperparameters
from epigraf.compat.importer import load_original
from epigraf.compat.original import convert_generator_state, model_config
from epigraf.patches import PatchParams

TOL = 1e-4


@pytest.fixture(scope="module")
def imported(original_fixtures, tmp_path_factory):
    """tiny_snapshot.pkl imported through the CLI, hyperparameters read from the pickle itself."""
    out = tmp_path_factory.mktemp("import") / "tiny.safetensors"
    assert main(["import", str(original_fixtures.root / "tiny_snapshot.pkl"), "--out", str(out)]) == 0
    return load_checkpoint(out)


def _assert_reproduces_fixtures(G_ema, fx) -> None:
    with torch.no_grad():
        for case, psi in (("mapping_psi1", 1.0), ("mapping_psi07", 0.7)):
            ws = G_ema.mapping(fx.inputs(case)["z"], None, truncation_psi=psi)
            assert rel_err(ws, fx.outputs(case)["ws"]) < TOL
        x = fx.inputs("render_full")
        out = G_ema(x["z"], None, x["camera_angles"], deterministic=True)
        assert rel_err(out.image, fx.outputs("render_full")["image"]) < TOL
        assert rel_err(out.depth, fx.outputs("render_full")["depth"]) < TOL
        x = fx.inputs("render_patch")
        pp = PatchParams(x["patch_scales"], x["patch_offsets"])
        out = G_ema(x["z"], None, x["camera_angles"], patch_params=pp, deterministic=True)
        assert rel_err(out.image, fx.outputs("render_patch")["image"]) < TOL
        assert rel_err(out.depth, fx.outputs("render_patch")["depth"]) < TOL


def _assert_d_logits(D, fx) -> None:
    x = fx.inputs("D_logits")
    with torch.no_grad():
        logits = D(x["img"], None, PatchParams(x["patch_scales"], x["patch_offsets"]))
    assert rel_err(logits, fx.outputs("D_logits")["logits"]) < TOL


def test_hyperparameters_read_from_the_snapshot_equal_the_config(original_fixtures):
    found = snapshot_hyperparameters(original_fixtures.root / "tiny_snapshot.pkl")
    ref = original_fixtures.config
    informational = {"name", "D_num_fp16_res", "D_block_resolutions", "G_block_resolutions", "mean_camera_pose"}
    assert set(ref) - set(found) - {"original_cfg"} <= informational
    assert {k: v for k, v in found.items() if k in ref and k != "name"} == {
        k: ref[k] for k in found if k in ref and k != "name"
    }
    # The mean pose is a tensor; load_original takes it from the state dict.
    with_pose = {**found, "mean_camera_pose": ref["mean_camera_pose"]}
    assert model_config(with_pose).generator == model_config(ref).generator
    assert model_config(found).discriminator == model_config(ref).discriminator


def test_imported_snapshot_reproduces_the_fixtures(imported, original_fixtures):
    _assert_reproduces_fixtures(imported.G_ema, original_fixtures)
    _assert_d_logits(imported.D, original_fixtures)
    # The training G is the pickle's own (G_ema plus a perturbation), not a copy of G_ema.
    ref_g = convert_generator_state(load_file(str(original_fixtures.root / "tiny_snapshot_G.safetensors")))
    ours = imported.G.state_dict()
    assert set(ours) == set(ref_g)
    assert all(torch.equal(ours[k], ref_g[k]) for k in ours)
    assert not all(torch.equal(ours[k], imported.G_ema.state_dict()[k]) for k in ours)


def test_import_metadata(imported):
    meta = imported.metadata
    assert meta["source_format"] == "original-snapshot" and meta["config_source"] == "snapshot"
    assert meta["imported_from"].endswith("tiny_snapshot.pkl")
    assert meta["stats"]["cur_nimg"] == 4000
    assert meta["training_set_kwargs"]["resolution"] == 32
    assert imported.config.generator.mean_camera_pose == pytest.approx((0.0, np.pi / 2, 0.0))


def test_explicit_config_gives_the_same_networks(imported, original_fixtures):
    ckpt = load_original(original_fixtures.root / "tiny_snapshot.pkl",
                         config=original_fixtures.root / "tiny_config.json")
    assert ckpt.metadata["config_source"] == "config:tiny_config.json"
    assert ckpt.config.generator == imported.config.generator
    for k, v in ckpt.G_ema.state_dict().items():
        assert torch.equal(v, imported.G_ema.state_dict()[k])


def test_preset_that_does_not_fit_names_the_keys(original_fixtures, tmp_path, capsys):
    out = tmp_path / "x.safetensors"
    rc = main(["import", str(original_fixtures.root / "tiny_snapshot.pkl"), "--preset", "ffhq256", "--out", str(out)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "G_ema state dict does not fit" in err and "mis-shaped keys" in err and "preset:ffhq256" in err
    assert not out.exists()


def test_plain_state_dict_files(original_fixtures, tmp_path):
    root = original_fixtures.root
    ckpt = load_original(root / "tiny_G.safetensors", config=root / "tiny_config.json")
    assert ckpt.G is None and ckpt.D is None
    assert ckpt.metadata["source_format"] == "original-state-dict"
    _assert_reproduces_fixtures(ckpt.G_ema, original_fixtures)

    nested = tmp_path / "weights.pt"
    torch.save({"G_ema": original_fixtures.g_state, "D": original_fixtures.d_state}, nested)
    out = tmp_path / "nested.safetensors"
    assert main(["import", str(nested), "--config", str(root / "tiny_config.json"), "--out", str(out)]) == 0
    loaded = load_checkpoint(out)
    assert loaded.G is None and loaded.D is not None
    _assert_d_logits(loaded.D, original_fixtures)


def test_state_dict_without_hyperparameters_is_refused(original_fixtures, tmp_path, capsys):
    rc = main(["import", str(original_fixtures.root / "tiny_G.safetensors"), "--out", str(tmp_path / "x.safetensors")])
    assert rc == 2
    assert "--config" in capsys.readouterr().err


def test_existing_output_needs_force(original_fixtures, tmp_path, capsys):
    out = tmp_path / "x.safetensors"
    out.write_bytes(b"keep me")
    rc = main(["import", str(original_fixtures.root / "tiny_snapshot.pkl"), "--out", str(out)])
    assert rc == 2 and "--force" in capsys.readouterr().err
    assert out.read_bytes() == b"keep me"


def test_foreign_global_is_refused_and_not_run(tmp_path, capsys):
    marker = tmp_path / "executed"
    evil = tmp_path / "network-snapshot-000000.pkl"
    # Protocol 0 by hand: the pickler would name os.system by its home module 'posix'.
    evil.write_bytes(b"cos\nsystem\n(V" + f"touch {marker}".encode() + b"\ntR.")
    out = tmp_path / "out.safetensors"
    rc = main(["import", str(evil), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "os.system" in err and "refusing" in err
    assert len(err.strip().splitlines()) == 1  # one clean line, no traceback
    assert not marker.exists()
    assert not out.exists()


# --- a snapshot written the way GPU-era training wrote them: CUDA storages, numpy < 2 module names,
#     StyleGAN-style persistence module, a module source that would leave a marker if executed.


def _gpu_era_pickle(states: dict[str, dict[str, torch.Tensor]], marker: Path, monkeypatch) -> bytes:
    mods = ts._old_modules()
    for name, module in mods.items():
        monkeypatch.setitem(sys.modules, name, module)
    persistent = mods["torch_utils.persistence"]._reconstruct_persistent_obj
    old_np = mods["numpy.core.multiarray"]

    def record(state: dict[str, torch.Tensor], class_name: str):
        tree: dict = {}
        for key, value in state.items():
            *path, leaf = key.split(".")
            node = tree
            for part in path:
                node = node.setdefault(part, {})
            node[leaf] = value.clone()

        def build(node: dict, name: str):
            params = {k: ts._parameter(v) for k, v in node.items() if isinstance(v, torch.Tensor)}
            children = {k: build(v, k) for k, v in node.items() if isinstance(v, dict)}
            gain = ts._NumpyOld(old_np.scalar, np.float64(0.5))
            return ts._Persistent(persistent, name, ts._module_state(params, modules=children, weight_gain=gain),
                                  marker)

        return build(tree, class_name)

    snapshot = {
        "training_set_kwargs": mods["dnnlib.util"].EasyDict(resolution=32),
        "G": record(states["G"], "Generator"),
        "D": record(states["D"], "Discriminator"),
        "G_ema": record(states["G_ema"], "Generator"),
        "augment_pipe": None,
        "stats": {"cur_nimg": 123},
    }
    data = pickle.dumps(snapshot, protocol=4)
    for name in mods:
        monkeypatch.delitem(sys.modules, name)
    return data


def test_gpu_era_snapshot_imports_on_cpu(original_fixtures, tmp_path, monkeypatch):
    marker = tmp_path / "executed"
    root = original_fixtures.root
    g = load_file(str(root / "tiny_snapshot_G.safetensors"))
    data = _gpu_era_pickle({"G": g, "G_ema": original_fixtures.g_state, "D": original_fixtures.d_state},
                           marker, monkeypatch)
    assert b"cuda:0" in data and b"numpy.core.multiarray" in data and b"numpy._core" not in data
    path = tmp_path / "network-snapshot-000123.pkl"
    path.write_bytes(data)
    out = tmp_path / "gpu.safetensors"
    assert main(["import", str(path), "--config", str(root / "tiny_config.json"), "--out", str(out)]) == 0
    ckpt = load_checkpoint(out)
    _assert_reproduces_fixtures(ckpt.G_ema, original_fixtures)
    _assert_d_logits(ckpt.D, original_fixtures)
    assert ckpt.metadata["stats"] == {"cur_nimg": 123}
    assert not marker.exists()


def test_gpu_era_snapshot_without_embedded_configs_asks_for_one(original_fixtures, tmp_path, monkeypatch, capsys):
    states = {"G": original_fixtures.g_state, "G_ema": original_fixtures.g_state, "D": original_fixtures.d_state}
    path = tmp_path / "bare.pkl"
    path.write_bytes(_gpu_era_pickle(states, tmp_path / "executed", monkeypatch))
    rc = main(["import", str(path), "--out", str(tmp_path / "x.safetensors")])
    assert rc == 2
    assert "--config" in capsys.readouterr().err


def test_keys_file_config_is_accepted(original_fixtures):
    # keys_<preset>.json holds the hyperparameters under "config"; the paper widths do not fit tiny weights.
    with pytest.raises(ValueError, match="mis-shaped"):
        load_original(original_fixtures.root / "tiny_G.safetensors",
                      config=original_fixtures.root / "keys_ffhq256.json")
    cfg = json.loads((original_fixtures.root / "tiny_config.json").read_text())
    ckpt = load_original(original_fixtures.root / "tiny_G.safetensors", config={"config": cfg})
    assert ckpt.config.generator.image_resolution == 32
    assert isinstance(ckpt.G_ema.state_dict(), OrderedDict)
