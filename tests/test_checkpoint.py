"""Our checkpoint format: safetensors + config metadata, round trip and clear errors."""

from __future__ import annotations

import dataclasses
import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from epigraf.checkpoint import load_checkpoint, save_checkpoint
from epigraf.config import DiscriminatorConfig, ModelConfig, PatchConfig, from_dict, preset
from epigraf.nn.discriminator import Discriminator
from epigraf.nn.generator import Generator
from test_generator import tiny_generator_config


def tiny_model_config() -> ModelConfig:
    return ModelConfig(
        name="tiny",
        generator=tiny_generator_config(),
        discriminator=DiscriminatorConfig(image_resolution=32, input_resolution=16, channel_base=256,
                                          channel_max=16, mbstd_group_size=2, hyper_mod_dim=32),
        patch=PatchConfig(image_resolution=32, resolution=16, group_size=2),
    )


def test_round_trip_preserves_weights_config_and_outputs(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_model_config()
    G, D = Generator(cfg.generator).eval(), Discriminator(cfg.discriminator)
    path = save_checkpoint(tmp_path / "net.safetensors", cfg, G_ema=G, G=G, D=D, metadata={"kimg": 12.5})
    ckpt = load_checkpoint(path)
    assert ckpt.config == cfg
    assert ckpt.metadata == {"kimg": 12.5}
    z, angles = torch.randn(1, 16), torch.tensor([[0.2, 1.4, 0.0]])
    with torch.no_grad():
        assert torch.equal(G(z, None, angles, deterministic=True).image,
                           ckpt.G_ema(z, None, angles, deterministic=True).image)
    for ours, loaded in ((G, ckpt.G), (D, ckpt.D)):
        for k, v in ours.state_dict().items():
            assert torch.equal(v, loaded.state_dict()[k])
    assert not (tmp_path / "net.safetensors.tmp").exists()


def test_g_ema_only_checkpoint(tmp_path):
    cfg = tiny_model_config()
    ckpt = load_checkpoint(save_checkpoint(tmp_path / "g.safetensors", cfg, G_ema=Generator(cfg.generator)))
    assert ckpt.G is None and ckpt.D is None


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_not_a_safetensors_file(tmp_path):
    path = tmp_path / "snapshot.pkl"
    path.write_bytes(b"\x80\x04garbage")
    with pytest.raises(ValueError, match="not an epigraf checkpoint"):
        load_checkpoint(path)


def test_foreign_safetensors_file(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="not an epigraf checkpoint: format None"):
        load_checkpoint(path)


def test_weights_that_do_not_fit_the_stored_config_are_named(tmp_path):
    cfg = tiny_model_config()
    path = save_checkpoint(tmp_path / "net.safetensors", cfg, G_ema=Generator(cfg.generator))
    bigger = dataclasses.replace(cfg, generator=dataclasses.replace(cfg.generator, mlp_hidden=32))
    from safetensors.torch import load_file
    tensors = load_file(str(path))
    save_file(tensors, str(path), metadata={"format": "epigraf-checkpoint-1",
                                            "config": json.dumps(dataclasses.asdict(bigger))})
    with pytest.raises(ValueError,
                       match=r"mis-shaped keys: field.mlp.model.0.weight \(file \[16, 8\], model \[32, 8\]"):
        load_checkpoint(path)


def test_corrupt_config_metadata(tmp_path):
    path = tmp_path / "bad.safetensors"
    save_file({"G_ema.x": torch.zeros(1)}, str(path), metadata={"format": "epigraf-checkpoint-1", "config": "{"})
    with pytest.raises(ValueError, match="stored config is unreadable"):
        load_checkpoint(path)


def test_an_original_pickle_points_to_epigraf_import(tmp_path):
    path = tmp_path / "network-snapshot-025000.pkl"
    path.write_bytes(pickle.dumps({"G_ema": None}, protocol=4))
    with pytest.raises(ValueError, match=f"must first be converted: epigraf import {path} "
                                         "--out network-snapshot-025000.safetensors"):
        load_checkpoint(path)


def test_a_pickle_by_content_points_to_epigraf_import(tmp_path):
    path = tmp_path / "downloaded.bin"
    path.write_bytes(pickle.dumps([1, 2], protocol=2))
    with pytest.raises(ValueError, match="epigraf import"):
        load_checkpoint(path)


def test_a_training_state_points_to_the_network_file_beside_it(tmp_path):
    path = tmp_path / "training-state-0000000512.pt"
    torch.save({"step": 1}, path)
    with pytest.raises(ValueError, match="training state .* the networks are in network-0000000512.safetensors"):
        load_checkpoint(path)


def test_another_torch_save_file_names_what_to_pass(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="torch.save file: pass a run's network-\\*.safetensors"):
        load_checkpoint(path)


def test_generate_refuses_a_pickle_in_one_line(tmp_path, capsys):
    from epigraf.cli import main

    path = tmp_path / "net.pkl"
    path.write_bytes(pickle.dumps({}, protocol=4))
    assert main(["generate", "--checkpoint", str(path), "--device", "cpu", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "epigraf import" in err and "Traceback" not in err


def test_a_config_written_before_the_sphere_rebuild_still_loads():
    """Checkpoints saved before the sphere background followed the original stored num_fourier_freqs."""
    data = dataclasses.asdict(preset("builtin"))
    data["generator"]["render"]["sphere"]["num_fourier_freqs"] = 6
    assert from_dict(ModelConfig, data) == preset("builtin")
    data["generator"]["render"]["sphere"]["not_a_field"] = 1
    with pytest.raises(ValueError, match="not_a_field"):
        from_dict(ModelConfig, data)
