"""Discriminator: equivalence with the original's tiny fixtures, key/parameter layout of the paper
presets, and the cheap properties of docs/method.md §4 / §11."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from epigraf.config import DiscriminatorConfig
from epigraf.nn.discriminator import (
    PATCH_EMBED_DIM,
    CameraEncoder,
    ConditioningMapping,
    Discriminator,
    DiscriminatorBlock,
    DiscriminatorEpilogue,
    HyperModulatedConv2d,
    ScalarEncoder,
    discriminator_key_map,
    fourier_coefficients,
)
from epigraf.nn.layers import MinibatchStd, fir_filter_2d

PRESETS = ("ffhq512", "ffhq256", "cats256", "plants256", "food256")
TOL = 1e-4


def _fixture_dir() -> Path:
    from conftest import original_fixtures_dir

    return original_fixtures_dir()


@functools.lru_cache(maxsize=1)
def _load_tiny() -> tuple[dict, dict, dict] | None:
    """(cases by name, tensors, D state dict), cloned out of the memory map; None if absent."""
    root = _fixture_dir()
    if not (root / "tiny_cases_public.json").is_file():
        return None
    from safetensors.torch import load_file

    index = json.loads((root / "tiny_cases_public.json").read_text())
    tensors = {k: v.clone() for k, v in load_file(str(root / index["tensors"])).items()}
    d_sd = {k: v.clone() for k, v in load_file(str(root / index["weights"]["D"])).items()}
    return {case["name"]: case for case in index["cases"]}, tensors, d_sd


@pytest.fixture(scope="module")
def tiny():
    data = _load_tiny()
    if data is None:
        pytest.skip(f"original fixtures not found under {_fixture_dir()}")
    return data


def _keys_json(preset: str) -> dict:
    path = _fixture_dir() / f"keys_{preset}.json"
    if not path.is_file():
        pytest.skip(f"original fixtures not found under {_fixture_dir()}")
    return json.loads(path.read_text())


def _cfg_from_original(cfg: dict) -> DiscriminatorConfig:
    """Our config from the fixtures' hyperparameter JSON (tiny_config.json / keys_*.json["config"])."""
    return DiscriminatorConfig(
        image_resolution=cfg["img_resolution"], input_resolution=cfg["patch_resolution"], c_dim=cfg["c_dim"],
        channel_base=cfg["D_channel_base"], channel_max=cfg["D_channel_max"], conv_clamp=cfg["D_conv_clamp"],
        num_fp16_res=cfg["D_num_fp16_res"], mbstd_group_size=cfg["mbstd_group_size"],
        mbstd_num_channels=cfg["mbstd_num_channels"], hyper_mod=cfg["hyper_mod"],
        hyper_mod_dim=cfg["hyper_mod_dim"], patch_params_cond=cfg["patch_params_cond"],
        camera_cond=cfg["D_camera_cond"], camera_cond_raw=cfg["D_camera_cond_raw"],
        camera_cond_drop_p=cfg["D_camera_cond_drop_p"],
    )


TINY_CFG = DiscriminatorConfig(image_resolution=32, input_resolution=16, channel_base=256, channel_max=32,
                               mbstd_group_size=2, hyper_mod=True, c_dim=0)


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours.detach().float() - ref).abs().max() / ref.abs().max().clamp_min(1e-6)).item()


def _patch_params(scales: torch.Tensor, offsets: torch.Tensor) -> SimpleNamespace:
    return SimpleNamespace(scales=scales, offsets=offsets)


def _random_patch_params(b: int, gen: torch.Generator) -> SimpleNamespace:
    s = 0.25 + 0.75 * torch.rand(b, 1, generator=gen)
    o = (1 - s) * torch.rand(b, 2, generator=gen)
    return _patch_params(s.expand(b, 2).clone(), o)


@pytest.fixture(scope="module")
def tiny_d(tiny):
    _, _, d_sd = tiny
    d = Discriminator(TINY_CFG).eval()
    d.load_state_dict({discriminator_key_map(k): v for k, v in d_sd.items() if discriminator_key_map(k)})
    return d


# ---------------------------------------------------------------- equivalence with the original


def test_tiny_config_matches_fixture_config(tiny):
    cfg = json.loads((_fixture_dir() / "tiny_config.json").read_text())
    assert _cfg_from_original(cfg) == TINY_CFG
    d = Discriminator(TINY_CFG)
    assert d.block_resolutions == cfg["D_block_resolutions"]
    assert d.cmap_dim == cfg["D_cmap_dim"]
    assert TINY_CFG.num_additional_start_blocks == cfg["num_additional_start_blocks"]


def test_constant_buffers_of_the_original(tiny):
    _, _, d_sd = tiny
    dropped = [k for k in d_sd if discriminator_key_map(k) is None]
    assert "scalar_enc.fourier_encoder.fourier_coefs" in dropped
    for key in dropped:
        if key.endswith("resample_filter"):
            torch.testing.assert_close(d_sd[key], fir_filter_2d(), rtol=0, atol=1e-7)
        else:
            torch.testing.assert_close(d_sd[key], fourier_coefficients(), rtol=0, atol=1e-7)
            torch.testing.assert_close(d_sd[key], torch.tensor([math.pi * 2**j / 1024 for j in range(10)]))


def test_tiny_state_dict_keys_and_shapes(tiny):
    _, _, d_sd = tiny
    ours = Discriminator(TINY_CFG).state_dict()
    mapped = {discriminator_key_map(k): v.shape for k, v in d_sd.items() if discriminator_key_map(k)}
    assert set(ours) == set(mapped)
    assert all(ours[k].shape == shape for k, shape in mapped.items())


@pytest.mark.parametrize("name", ["D_logits", "D_logits_b4"])
def test_logits_match_original(tiny, tiny_d, name):
    cases, t, _ = tiny
    case = cases[name]
    inp = {arg: (t[n] if isinstance(n, str) else None) for arg, n in case["inputs"].items()}
    with torch.no_grad():
        logits = tiny_d(inp["img"], inp["c"], _patch_params(inp["patch_scales"], inp["patch_offsets"]),
                        inp["camera_angles"])
    ref = t[case["outputs"]["logits"]]
    assert logits.shape == ref.shape
    assert rel_err(logits, ref) < TOL


def test_block_first_matches_original(tiny, tiny_d):
    _, t, _ = tiny
    block = tiny_d.b32
    assert block.is_first and not block.down
    with torch.no_grad():
        out = block(None, t["D_block_first.img"], t["D_block_first.c"])
    assert rel_err(out, t["D_block_first.out"]) < TOL


def test_block_down_matches_original(tiny, tiny_d):
    _, t, _ = tiny
    block = tiny_d.b16
    assert block.down and not block.is_first
    with torch.no_grad():
        out = block(t["D_block_down.x"], None, t["D_block_down.c"])
    assert out.shape == t["D_block_down.out"].shape
    assert rel_err(out, t["D_block_down.out"]) < TOL


@pytest.mark.parametrize("name", ["mbstd", "mbstd_g4"])
def test_minibatch_std_matches_original(tiny, name):
    cases, t, _ = tiny
    kw = cases[name]["kwargs"]
    out = MinibatchStd(kw["group_size"], kw["num_channels"])(t[f"{name}.x"])
    assert rel_err(out, t[f"{name}.out"]) < TOL


def test_scalar_encoder_matches_original(tiny, tiny_d):
    _, t, _ = tiny
    with torch.no_grad():
        out = tiny_d.scalar_enc(t["scalar_enc.x"])
    assert out.shape == (t["scalar_enc.x"].shape[0], PATCH_EMBED_DIM)
    assert rel_err(out, t["scalar_enc.out"]) < TOL


def test_only_the_first_fromrgb_is_used(tiny, tiny_d):
    """The original keeps a fromrgb in every block; the fixture logits match with only the first one used."""
    cases, t, _ = tiny
    inp = cases["D_logits"]["inputs"]
    d = Discriminator(TINY_CFG).eval()
    d.load_state_dict(tiny_d.state_dict())
    pp = _patch_params(t[inp["patch_scales"]], t[inp["patch_offsets"]])
    logits = d(t[inp["img"]], None, pp)
    logits.sum().backward()
    assert d.b32.fromrgb.weight.grad is not None
    assert d.b16.fromrgb.weight.grad is None and d.b8.fromrgb.weight.grad is None
    assert rel_err(logits, t[cases["D_logits"]["outputs"]["logits"]]) < TOL


# ---------------------------------------------------------------- paper presets: keys and sizes


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_keys_shapes_and_parameter_count(preset):
    data = _keys_json(preset)
    cfg = _cfg_from_original(data["config"])
    with torch.device("meta"):
        d = Discriminator(cfg)
    entries = {e["key"]: e for e in data["D"]["entries"]}
    dropped = {k for k in entries if discriminator_key_map(k) is None}
    assert all(entries[k]["kind"] == "buffer" for k in dropped)
    ours = d.state_dict()
    assert set(ours) | dropped == set(entries)
    assert set(ours) == {discriminator_key_map(k) for k in entries} - {None}
    assert all(list(ours[k].shape) == entries[k]["shape"] for k in ours)
    assert sum(p.numel() for p in d.parameters()) == data["D"]["num_parameters"]
    assert d.block_resolutions == data["config"]["D_block_resolutions"]
    assert d.cmap_dim == data["config"]["D_cmap_dim"]
    assert cfg.num_additional_start_blocks == data["config"]["num_additional_start_blocks"]


# ---------------------------------------------------------------- properties (docs/method.md §4, §11)


def _small_cfg(**kw) -> DiscriminatorConfig:
    base = dict(image_resolution=64, input_resolution=32, channel_base=512, channel_max=16,
                mbstd_group_size=2, hyper_mod_dim=16)
    base.update(kw)
    return DiscriminatorConfig(**base)


def test_patch_embedding_is_828_dims():
    enc = ScalarEncoder()
    assert enc.const_embed.weight.shape == (1001, 256)
    torch.testing.assert_close(enc.fourier_coefs, torch.tensor([math.pi * 2**j / 1024 for j in range(10)]))
    x = torch.tensor([[0.0, 1.0, 0.4996], [0.0005, 0.0015, 0.25]])
    out = enc(x)
    assert out.shape == (2, 828) == (2, PATCH_EMBED_DIM)
    per = out.view(2, 3, 276)
    args = x[:, :, None] * 1000 * enc.fourier_coefs
    torch.testing.assert_close(per[..., :10], args.sin())
    torch.testing.assert_close(per[..., 10:20], args.cos())
    rows = torch.tensor([[0, 1000, 500], [0, 2, 250]])  # half to even: 0.5 → 0, 1.5 → 2
    torch.testing.assert_close(per[..., 20:], enc.const_embed.weight[rows])


def test_scalar_encoder_rejects_out_of_range():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ScalarEncoder()(torch.tensor([[0.5, 1.2, 0.0]]))


@pytest.mark.parametrize("image_res,num_start", [(64, 0), (128, 1), (256, 2), (512, 3)])
def test_64px_patches_to_logits_with_stride1_start_blocks(image_res, num_start):
    cfg = DiscriminatorConfig(image_resolution=image_res, input_resolution=64, channel_base=1024,
                              channel_max=16, mbstd_group_size=2, hyper_mod_dim=16)
    assert cfg.num_additional_start_blocks == num_start
    d = Discriminator(cfg)
    assert [b.down for b in d.blocks] == [False] * num_start + [True] * 4
    sizes = []
    hooks = [b.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1])) for b in d.blocks]
    gen = torch.Generator().manual_seed(0)
    logits = d(torch.randn(4, 3, 64, 64, generator=gen), None, _random_patch_params(4, gen))
    for hk in hooks:
        hk.remove()
    assert logits.shape == (4,)
    assert sizes == [64] * num_start + [32, 16, 8, 4]
    assert torch.isfinite(logits).all()


def test_channels_follow_virtual_resolution():
    d = Discriminator(DiscriminatorConfig(image_resolution=512, input_resolution=64))
    assert [(b.tmp_channels, b.out_channels) for b in d.blocks] == [
        (32, 64), (64, 128), (128, 256), (256, 512), (512, 512), (512, 512), (512, 512)]
    assert d.b4.in_channels == 512 and d.cmap_dim == 512


def test_changing_only_patch_params_changes_logits():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    for cfg in (_small_cfg(), _small_cfg(patch_params_cond=False)):  # the latter: hyper-modulation alone
        d = Discriminator(cfg).eval()
        img = torch.randn(2, 3, 32, 32, generator=gen)
        a = d(img, None, _patch_params(torch.full((2, 2), 1.0), torch.zeros(2, 2)))
        b = d(img, None, _patch_params(torch.full((2, 2), 0.5), torch.full((2, 2), 0.25)))
        assert (a - b).abs().min() > 1e-6


def test_hyper_modulation_multiplier_in_open_interval():
    conv = HyperModulatedConv2d(8, 4, 3, hyper_dim=16)
    torch.manual_seed(0)
    torch.nn.init.normal_(conv.affine.bias, std=1.5)  # push some channels towards saturation
    h = torch.randn(32, 16)
    m = conv.multiplier(h)
    assert m.shape == (32, 8)
    assert (m > 0).all() and (m < 2).all()
    assert m.min() < 0.5 and m.max() > 1.5
    # Input-channel scaling equals per-sample weight scaling (no demodulation).
    x = torch.randn(2, 8, 6, 6)
    out = conv(x, h[:2])
    for i in range(2):
        w = conv.weight * conv.weight_gain * m[i][None, :, None, None]
        ref = torch.nn.functional.conv2d(x[i : i + 1], w, conv.bias, padding=1)
        ref = torch.nn.functional.leaky_relu(ref, 0.2) * math.sqrt(2)
        torch.testing.assert_close(out[i : i + 1], ref, rtol=1e-5, atol=1e-5)


def test_hyper_mod_only_touches_conv1():
    d = Discriminator(_small_cfg())
    for b in d.blocks:
        assert isinstance(b.conv1, HyperModulatedConv2d)
        assert b.conv1.affine.weight.shape == (b.tmp_channels, 16)
        assert not isinstance(b.conv0, HyperModulatedConv2d) and not isinstance(b.skip, HyperModulatedConv2d)
        torch.testing.assert_close(b.conv1.affine.bias, torch.zeros(b.tmp_channels))
    plain = Discriminator(_small_cfg(hyper_mod=False))
    assert not hasattr(plain, "hyper_mod_mapping")
    assert not any(isinstance(b.conv1, HyperModulatedConv2d) for b in plain.blocks)


def test_unconditional_d_has_no_projection():
    d = Discriminator(_small_cfg(hyper_mod=False, patch_params_cond=False))
    assert d.cmap_dim == 0 and not hasattr(d, "head_mapping") and not hasattr(d, "scalar_enc")
    assert d.b4.out.out_features == 1
    out = d(torch.randn(2, 3, 32, 32), None, None)
    assert out.shape == (2,)


def test_label_conditioning_enters_the_head():
    d = Discriminator(_small_cfg(c_dim=5)).eval()
    assert d.head_mapping.embed.in_features == 5 + PATCH_EMBED_DIM
    img = torch.randn(2, 3, 32, 32)
    pp = _patch_params(torch.ones(2, 2), torch.zeros(2, 2))
    c0, c1 = torch.eye(5)[[0, 0]], torch.eye(5)[[3, 3]]
    assert (d(img, c0, pp) - d(img, c1, pp)).abs().min() > 1e-6


def test_mapping_network_layout():
    m = ConditioningMapping(10, 6)
    assert [n for n, _ in m.named_children()] == ["embed", "fc0", "fc1"]
    assert m.embed.bias_gain == 1 and m.fc0.bias_gain == 0.01 and m.fc0.activation and not m.embed.activation
    assert m(torch.randn(3, 10)).shape == (3, 6)


def test_epilogue_projection():
    torch.manual_seed(0)
    ep = DiscriminatorEpilogue(8, cmap_dim=8, mbstd_group_size=2)
    x, cmap = torch.randn(4, 8, 4, 4), torch.randn(4, 8)
    feats = ep.out(ep.fc(ep.conv(ep.mbstd(x)).flatten(1)))
    torch.testing.assert_close(ep(x, cmap), (feats * cmap).sum(1) / math.sqrt(8))


def test_block_standalone_shapes():
    blk = DiscriminatorBlock(32, 8, 16, is_first=True, down=False, hyper_dim=4)
    out = blk(None, torch.randn(2, 3, 16, 16), torch.randn(2, 4))
    assert out.shape == (2, 16, 16, 16)
    blk = DiscriminatorBlock(16, 16, 32, is_first=False, down=True, hyper_dim=None)
    assert blk(torch.randn(2, 16, 16, 16), None).shape == (2, 32, 8, 8)


@pytest.mark.parametrize("raw,dim", [(False, 24), (True, 2)])
def test_camera_conditioning(raw, dim):
    cfg = _small_cfg(camera_cond=True, camera_cond_raw=raw, camera_cond_drop_p=0.5)
    d = Discriminator(cfg).eval()
    assert d.head_mapping.embed.in_features == PATCH_EMBED_DIM + dim
    img = torch.randn(2, 3, 32, 32)
    pp = _patch_params(torch.ones(2, 2), torch.zeros(2, 2))
    cams = torch.tensor([[0.3, 1.4, 0.0], [0.3, 1.4, 0.0]])
    a = d(img, None, pp, cams)
    b = d(img, None, pp, cams + torch.tensor([0.5, 0.2, 0.0]))
    assert (a - b).abs().min() > 1e-6
    with pytest.raises(ValueError, match="camera_angles"):
        d(img, None, pp)


def test_camera_encoder_layout_and_dropout():
    enc = CameraEncoder().eval()
    cams = torch.tensor([[0.4, 1.2, 0.0]])
    a = cams[:, :2] / (2 * math.pi)
    freqs = math.pi * 2.0 ** torch.arange(6)
    expected = torch.cat([torch.sin(a[0, 0] * freqs), torch.cos(a[0, 0] * freqs),
                          torch.sin(a[0, 1] * freqs), torch.cos(a[0, 1] * freqs)])
    torch.testing.assert_close(enc(cams)[0], expected)
    torch.testing.assert_close(CameraEncoder(raw=True).eval()(cams), a)
    drop = CameraEncoder(raw=True, drop_p=0.5).train()
    torch.manual_seed(0)
    out = drop(cams.expand(1000, 3))
    assert set(torch.unique(torch.round(out / a, decimals=4)).tolist()) == {0.0, 2.0}  # inverted scaling
    drop.eval()
    torch.testing.assert_close(drop(cams), a)


def test_reduced_precision_never_on_cpu():
    torch.manual_seed(0)
    d = Discriminator(_small_cfg()).eval()
    img, pp = torch.randn(2, 3, 32, 32), _patch_params(torch.ones(2, 2), torch.zeros(2, 2))
    ref = d(img, None, pp)
    d.use_fp16 = True
    assert torch.equal(d(img, None, pp), ref)
    assert [b.fp16_eligible for b in Discriminator(DiscriminatorConfig(image_resolution=512)).blocks] == \
        [True] * 4 + [False] * 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_reduced_precision_on_cuda_is_close():
    torch.manual_seed(0)
    d = Discriminator(_small_cfg()).cuda().eval()
    img = torch.randn(4, 3, 32, 32, device="cuda")
    pp = _patch_params(torch.ones(4, 2, device="cuda"), torch.zeros(4, 2, device="cuda"))
    ref = d(img, None, pp)
    d.use_fp16 = True
    out = d(img, None, pp)
    assert out.dtype == torch.float32
    assert rel_err(out, ref) < 5e-2


def test_r1_gradient_flows_to_images():
    d = Discriminator(_small_cfg())
    img = torch.randn(2, 3, 32, 32, requires_grad=True)
    logits = d(img, None, _patch_params(torch.ones(2, 2), torch.zeros(2, 2)))
    (grad,) = torch.autograd.grad(logits.sum(), img, create_graph=True)
    grad.square().sum().backward()
    assert d.b8.conv1.weight.grad is not None


# ---------------------------------------------------------------- errors


@pytest.fixture(scope="module")
def small_d():
    return Discriminator(_small_cfg(c_dim=3, camera_cond=True)).eval()


def _inputs(b=2, r=32):
    return (torch.randn(b, 3, r, r), torch.eye(3)[torch.arange(b) % 3],
            _patch_params(torch.ones(b, 2), torch.zeros(b, 2)), torch.zeros(b, 3))


def test_error_wrong_image_shape(small_d):
    img, c, pp, cams = _inputs()
    with pytest.raises(ValueError, match=r"\[B, 3, 32, 32\].*r = 32"):
        small_d(torch.randn(2, 3, 64, 64), c, pp, cams)
    with pytest.raises(ValueError, match="images"):
        small_d(torch.randn(2, 4, 32, 32), c, pp, cams)


def test_error_labels(small_d):
    img, c, pp, cams = _inputs()
    with pytest.raises(ValueError, match="needs c"):
        small_d(img, None, pp, cams)
    with pytest.raises(ValueError, match=r"c must be \[2, 3\]"):
        small_d(img, c[:, :2], pp, cams)
    with pytest.raises(ValueError, match="unconditional"):
        Discriminator(_small_cfg())(img, c, pp)


def test_error_patch_params(small_d):
    img, c, pp, cams = _inputs()
    with pytest.raises(ValueError, match="patch_params.scales"):
        small_d(img, c, _patch_params(torch.ones(3, 2), torch.zeros(2, 2)), cams)
    with pytest.raises(ValueError, match="patch_params.offsets"):
        small_d(img, c, _patch_params(torch.ones(2, 2), torch.zeros(3, 2)), cams)
    with pytest.raises(ValueError, match="needs patch_params"):
        small_d(img, c, None, cams)


def test_error_camera(small_d):
    img, c, pp, cams = _inputs()
    with pytest.raises(ValueError, match="needs camera_angles"):
        small_d(img, c, pp)
    with pytest.raises(ValueError, match="camera_angles must be"):
        small_d(img, c, pp, torch.zeros(3, 3))


def test_error_mbstd_group(small_d):
    img, c, pp, cams = _inputs(b=3)
    with pytest.raises(ValueError, match="divisible by the minibatch-stddev group size 2"):
        small_d(img, c, pp, cams)


def test_error_bad_resolutions():
    with pytest.raises(ValueError, match="power of two"):
        Discriminator(_small_cfg(input_resolution=48, image_resolution=96))
    with pytest.raises(ValueError, match="patch resolution"):
        Discriminator(_small_cfg(image_resolution=96))
