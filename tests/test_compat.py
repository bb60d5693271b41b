"""The converter: original hyperparameters + key names → our networks, for every paper preset."""

from __future__ import annotations

import copy
import dataclasses
import json
import re

import pytest
import torch

from epigraf.compat.original import (
    UNSUPPORTED_OPTIONS,
    convert_discriminator_state,
    convert_generator_state,
    from_original,
    model_config,
)
from epigraf.config import preset
from epigraf.nn.discriminator import Discriminator
from epigraf.nn.generator import Generator

PAPER_PRESETS = ("ffhq512", "ffhq256", "cats256", "plants256", "food256")


def _keys_file(original_fixtures, name):
    return json.loads((original_fixtures.root / f"keys_{name}.json").read_text())


def _fake_state(entries):
    """Tensors of the original's shapes (meta device: no memory), filters filled with the real filter values."""
    from epigraf.nn.layers import fir_filter_2d

    state = {}
    for e in entries:
        if e["key"].endswith("resample_filter"):
            state[e["key"]] = fir_filter_2d()
        elif e["key"].endswith("fourier_coefs"):
            n = e["shape"][0]
            state[e["key"]] = torch.pi * 2.0 ** torch.arange(n) / 2**n
        else:
            state[e["key"]] = torch.empty(e["shape"], device="meta")
    return state


@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_every_original_key_maps_and_counts_match(original_fixtures, name):
    keys = _keys_file(original_fixtures, name)
    cfg = model_config(keys["config"])
    with torch.device("meta"):
        G, D = Generator(cfg.generator), Discriminator(cfg.discriminator)
    for net, entries, convert in ((G, keys["G"], convert_generator_state), (D, keys["D"], convert_discriminator_state)):
        ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
        converted = {k: tuple(v.shape) for k, v in convert(_fake_state(entries["entries"])).items()}
        assert converted == ours  # no key left over on either side, every shape equal
        assert sum(p.numel() for p in net.parameters()) == entries["num_parameters"]


@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_our_presets_equal_the_original_architectures(original_fixtures, name):
    keys = _keys_file(original_fixtures, name)
    ours = preset(name)
    with torch.device("meta"):
        G, D = Generator(ours.generator), Discriminator(ours.discriminator)
    assert sum(p.numel() for p in G.parameters()) == keys["G"]["num_parameters"]
    assert sum(p.numel() for p in D.parameters()) == keys["D"]["num_parameters"]
    converted = model_config(keys["config"])
    assert converted.generator.camera == ours.generator.camera
    assert converted.generator.render.white_back == ours.generator.render.white_back
    assert converted.patch.min_scale == pytest.approx(ours.patch.min_scale)
    assert G.num_ws == keys["config"]["num_ws"]


def test_tiny_weights_load_and_stay_bit_exact(original_fixtures):
    G, D = from_original(original_fixtures.config, original_fixtures.g_state, original_fixtures.d_state)
    assert torch.equal(G.state_dict()["synthesis.blocks.b8.conv0.weight"],
                       original_fixtures.g_state["synthesis.tri_plane_decoder.b8.conv0.weight"])
    assert torch.equal(G.mapping.mean_camera_pose, original_fixtures.g_state["mapping.mean_camera_pose"])
    assert torch.equal(D.state_dict()["b16.conv1.affine.weight"], original_fixtures.d_state["b16.conv1.affine.weight"])
    assert not G.training and not D.training


def test_random_init_without_states(original_fixtures):
    G, D = from_original(original_fixtures.config)
    assert G.num_ws == original_fixtures.config["num_ws"]
    assert D.cmap_dim == original_fixtures.config["D_cmap_dim"]


def test_missing_unexpected_and_misshaped_keys_are_named(original_fixtures):
    g = dict(original_fixtures.g_state)
    del g["mapping.fc1.bias"]
    g["mapping.fc9.weight"] = torch.zeros(1)
    g["synthesis.tri_plane_mlp.model.0.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError) as err:
        from_original(original_fixtures.config, g)
    msg = str(err.value)
    assert "missing keys: mapping.fc1.bias" in msg
    assert "unexpected keys: mapping.fc9.weight" in msg
    assert "field.mlp.model.0.weight (file [3, 3], model [16, 8])" in msg


def test_foreign_key_prefix_and_wrong_constant_buffer_are_rejected(original_fixtures):
    g = dict(original_fixtures.g_state)
    g["superresolution.conv.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="unexpected original key 'superresolution.conv.weight'"):
        from_original(original_fixtures.config, g)
    d = dict(original_fixtures.d_state)
    d["b16.resample_filter"] = torch.ones(4, 4)
    with pytest.raises(ValueError, match=r"b16.resample_filter is not the \[1, 3, 3, 1\]"):
        from_original(original_fixtures.config, None, d)


@pytest.mark.parametrize("name, key", [
    ("condfourier_D", "head_mapping.camera_scalar_enc.fourier_encoder.fourier_coefs"),
    ("bgsphere_G", "synthesis.bg_model.blocks.0.scalar_enc.fourier_encoder.fourier_coefs"),
])
def test_camera_and_background_fourier_buffers_are_checked_and_dropped(original_fixtures, name, key):
    from safetensors.torch import load_file

    state = load_file(str(original_fixtures.root / f"{name}.safetensors"))
    assert torch.allclose(state[key], torch.pi * 2.0 ** torch.arange(6) / 64)
    convert = convert_discriminator_state if name.endswith("_D") else convert_generator_state
    assert key not in convert(state) and not any("fourier" in k for k in convert(state))
    state[key] = state[key] * 2
    with pytest.raises(ValueError, match=r"fourier_coefs differs from the frequencies π·2\^j/2\^6"):
        convert(state)


def test_unsupported_original_options_are_refused(original_fixtures):
    with pytest.raises(ValueError, match="original option backbone = 'stylegan3-r' is not supported"):
        from_original({**original_fixtures.config, "backbone": "stylegan3-r"})
    with pytest.raises(ValueError, match="lacks 'fov'"):
        from_original({k: v for k, v in original_fixtures.config.items() if k != "fov"})
    with pytest.raises(ValueError, match="declares num_ws 9"):
        from_original({**original_fixtures.config, "num_ws": 9})


def test_pose_cond_flag_builds_the_original_posed_ffhq512(original_fixtures):
    """`epigraf train --preset ffhq512 --pose-cond` = the original's FFHQ-512 with a Fourier pose-conditioned D
    (drop p 0.5) and GPC: keys, shapes and parameter counts of keys_ffhq512posecond.json."""
    from types import SimpleNamespace

    from epigraf.cli import build_parser
    from epigraf.train.data_feed import model_config_for
    from epigraf.train.options import TrainOptions, options_from_args

    keys = _keys_file(original_fixtures, "ffhq512posecond")
    args = build_parser().parse_args(["train", "--preset", "ffhq512", "--pose-cond"])
    opts = options_from_args(args, TrainOptions).with_preset_defaults()  # as `train` resolves them
    posed_faces = SimpleNamespace(resolution=512, c_dim=0, has_cameras=True, mean_camera_pose=None)
    cfg = model_config_for(opts, posed_faces, preset("ffhq512"))
    assert cfg.generator.camera_cond and cfg.discriminator.camera_cond
    assert not cfg.discriminator.camera_cond_raw and cfg.discriminator.camera_cond_drop_p == 0.5
    original = model_config(keys["config"]).generator  # its mean pose is the float32 buffer value
    assert cfg.generator.mean_camera_pose == pytest.approx(original.mean_camera_pose)
    assert dataclasses.replace(cfg.generator, mean_camera_pose=original.mean_camera_pose) == original
    assert cfg.discriminator == model_config(keys["config"]).discriminator
    with torch.device("meta"):
        G, D = Generator(cfg.generator), Discriminator(cfg.discriminator)
    for net, entries, convert in ((G, keys["G"], convert_generator_state), (D, keys["D"], convert_discriminator_state)):
        converted = {k: tuple(v.shape) for k, v in convert(_fake_state(entries["entries"])).items()}
        assert converted == {k: tuple(v.shape) for k, v in net.state_dict().items()}
        assert sum(p.numel() for p in net.parameters()) == entries["num_parameters"]
    without = model_config_for(options_from_args(build_parser().parse_args(["train", "--preset", "ffhq512"]),
                                                 TrainOptions), posed_faces, preset("ffhq512"))
    assert not without.generator.camera_cond and not without.discriminator.camera_cond


UNSUPPORTED_VALUES = {
    "backbone": "raw_planes", "img_channels": 4, "has_view_cond": True, "posenc_period_len": 64,
    "bg_model.fmm.enabled": True, "bg_model.output_channels": 7, "bg_model.coord_dim": 3, "bg_model.type": "cube",
}


@pytest.mark.parametrize("option", [*(o[0] for o in UNSUPPORTED_OPTIONS), "bg_model.type"])
def test_every_unsupported_original_option_is_refused_by_name(option):
    """Starting from the sphere-background set (which loads), one option changed → a one-line error naming it."""
    from conftest import load_original_set

    config = copy.deepcopy(load_original_set("bgsphere").config)
    *parents, leaf = option.split(".")
    node = config
    for part in parents:
        node = node[part]
    node[leaf] = UNSUPPORTED_VALUES[option]
    with pytest.raises(ValueError, match=rf"^original option {re.escape(option)} = .* is not supported") as err:
        from_original(config)
    assert "\n" not in str(err.value)
