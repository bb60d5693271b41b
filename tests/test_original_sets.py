"""Every case of the original's posed and background fixture sets, run through ``from_original``.

Sets: ``condfourier`` (12 classes, GPC, Fourier pose-conditioned D with drop p 0.5), ``condraw`` (GPC, raw
pose-conditioned D) and ``bgsphere`` (NeRF++ sphere background, white background, Megascans cameras).
Each case name has one runner here; a case without a runner fails the test, so a set cannot grow
untested cases.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor

from conftest import FIXTURE_TOL, OriginalFixtures, load_original_set, rel_err
from epigraf.cameras import Cameras
from epigraf.cameras.rays import camera_directions, patch_grid, pixel_grid, points_along_rays, world_rays
from epigraf.checkpoint import load_checkpoint
from epigraf.cli import main
from epigraf.compat.original import convert_generator_state, from_original, model_config
from epigraf.inference import without_background
from epigraf.nn.discriminator import Discriminator
from epigraf.nn.field import sample_triplanes, split_planes
from epigraf.nn.generator import Generator
from epigraf.nn.layers import MinibatchStd, fir_filter_2d, upsample2d
from epigraf.patches import PatchParams, extract_patches
from epigraf.render.compositing import composite
from epigraf.render.samplers import coarse_depths, importance_depths, sample_pdf
from epigraf.train.loop import train
from epigraf.viewer import Renderer
from epigraf.viewer.params import parse_frame
from test_checkpoint import tiny_model_config
from test_generator import tiny_generator_config
from test_train import make_dataset, options

SETS = ("condfourier", "condraw", "bgsphere")
SNAPSHOT_SETS = ("condfourier", "bgsphere")  # the sets that come with a snapshot pickle

Runner = Callable[[OriginalFixtures, Generator, Discriminator], dict[str, Tensor]]


def _patch_params(x: dict[str, Tensor | None]) -> PatchParams:
    return PatchParams(x["patch_scales"], x["patch_offsets"])


def _mapping(case: str, psi: float) -> Runner:
    def run(fx, G, D):
        x = fx.inputs(case)
        return {"ws": G.mapping(x["z"], x["c"], psi, x.get("camera_angles_cond"))}
    return run


def _render_full(fx, G, D):
    x = fx.inputs("render_full")
    out = G(x["z"], x["c"], x["camera_angles"], deterministic=True)
    return {"image": out.image, "depth": out.depth}


def _render_patch(fx, G, D):
    x = fx.inputs("render_patch")
    out = G(x["z"], x["c"], x["camera_angles"], _patch_params(x), deterministic=True,
            camera_angles_cond=x["camera_angles_cond"])
    return {"image": out.image, "depth": out.depth}


def _d_logits(case: str) -> Runner:
    def run(fx, G, D):
        x = fx.inputs(case)
        return {"logits": D(x["img"], x["c"], _patch_params(x), x["camera_angles"])}
    return run


def _triplanes(fx, G, D):
    return {"planes": G.synthesize(fx.inputs("triplanes")["ws"], noise_mode="const")}


def _synth_layer_up(fx, G, D):
    x = fx.inputs("synth_layer_up")
    return {"out": G.synthesis.blocks.b8.conv0(x["x"], x["w"], noise_mode="const")}


def _synth_block(fx, G, D):
    x = fx.inputs("synth_block")
    out_x, out_img = G.synthesis.blocks.b8(x["x"], x["img"], x["ws"], noise_mode="const")
    return {"x": out_x, "img": out_img}


def _upsample2d(fx, G, D):
    return {"out": upsample2d(fx.inputs("upsample2d")["x"], fir_filter_2d()), "filter": fir_filter_2d()}


def _d_block_first(fx, G, D):
    x = fx.inputs("D_block_first")
    return {"out": D.blocks[0](None, x["img"], x["c"])}


def _d_block_down(fx, G, D):
    x = fx.inputs("D_block_down")
    block = next(b for b in D.blocks if b.down)
    return {"out": block(x["x"], None, x["c"])}


def _mbstd(case: str) -> Runner:
    def run(fx, G, D):
        kw = fx.kwargs(case)
        return {"out": MinibatchStd(kw["group_size"], kw["num_channels"])(fx.inputs(case)["x"])}
    return run


def _scalar_enc(fx, G, D):
    return {"out": D.scalar_enc(fx.inputs("scalar_enc")["x"])}


def _triplane_query(fx, G, D):
    x = fx.inputs("triplane_query")
    planes = split_planes(x["planes"], fx.config["triplane_feat_dim"])
    per_plane = sample_triplanes(planes, x["coords"], fx.kwargs("triplane_query")["scale"]).transpose(2, 3)
    return {"per_plane": per_plane, "mean": per_plane.mean(dim=1)}


def _mlp_decode(fx, G, D):
    return {"out": G.field.mlp(fx.inputs("mlp_decode")["feats"].mean(dim=1))}


def _triplane_render(fx, G, D):
    x = fx.inputs("triplane_render")
    return {"out": G.field(split_planes(x["planes"], fx.config["triplane_feat_dim"]), x["coords"])}


def _sample_pdf(fx, G, D):
    kw, x = fx.kwargs("sample_pdf"), fx.inputs("sample_pdf")
    return {"samples": sample_pdf(x["bins"], x["weights"], kw["N_importance"], deterministic=kw["det"],
                                  eps=kw["eps"])}


def _importance(fx, G, D):
    kw, x = fx.kwargs("importance"), fx.inputs("importance")
    return {"z_fine": importance_depths(x["z_coarse"], x["weights_coarse"], kw["N_importance"],
                                        deterministic=kw["det"])}


def _composite(case: str) -> Runner:
    def run(fx, G, D):
        kw, x = fx.kwargs(case), fx.inputs(case)
        rgb_sigma = x["rgb_sigma"]
        out = composite(rgb_sigma[..., :-1], rgb_sigma[..., -1], x["z_vals"][..., 0],
                        last_delta=1e10 if kw["use_inf_depth"] else 1e-3, density_shift=kw["density_shift"],
                        clamp_mode=kw["clamp_mode"], noise_std=kw["noise_std"],
                        white_back=kw["white_back_end_idx"] > 0, last_back=kw["last_back"])
        return {"rendered_feats": out.color, "depth": out.depth, "weights": out.weights[..., None],
                "final_transmittance": out.final_transmittance[..., 0]}
    return run


def _extract_patches(fx, G, D):
    x = fx.inputs("extract_patches")
    return {"out": extract_patches(x["img"], _patch_params(x), fx.kwargs("extract_patches")["resolution"])}


def _rays(fx, G, D):
    kw, x = fx.kwargs("rays"), fx.inputs("rays")
    params = _patch_params(x)
    cams = Cameras.from_angles(x["camera_angles"], kw["fov"], kw["radius"])
    full = pixel_grid(kw["full_resolution"], kw["full_resolution"])[None]
    origins, d_world = world_rays(cams, full)
    z = coarse_depths(kw["ray_start"], kw["ray_end"], kw["num_steps"], (), deterministic=True)
    return {
        "z_vals": z,
        "rays_d_cam_full": camera_directions(full, cams.fov),
        "rays_d_cam_patch": camera_directions(patch_grid(params.scales, params.offsets, kw["patch_resolution"]),
                                              torch.full((len(params),), kw["fov"])),
        "cam2world": cams.cam2world(),
        "points_world": points_along_rays(origins, d_world, z),
        "ray_d_world": d_world,
        "ray_o_world": origins[:, None].expand_as(d_world),
    }


RUNNERS: dict[str, Runner] = {
    "mapping_psi1": _mapping("mapping_psi1", 1.0),
    "mapping_psi07": _mapping("mapping_psi07", 0.7),
    "mapping_camcond": _mapping("mapping_camcond", 1.0),
    "triplanes": _triplanes,
    "render_full": _render_full,
    "render_patch": _render_patch,
    "D_logits": _d_logits("D_logits"),
    "D_logits_b4": _d_logits("D_logits_b4"),
    "synth_layer_up": _synth_layer_up,
    "synth_block": _synth_block,
    "upsample2d": _upsample2d,
    "D_block_first": _d_block_first,
    "D_block_down": _d_block_down,
    "mbstd": _mbstd("mbstd"),
    "mbstd_g4": _mbstd("mbstd_g4"),
    "scalar_enc": _scalar_enc,
    "triplane_query": _triplane_query,
    "mlp_decode": _mlp_decode,
    "triplane_render": _triplane_render,
    "sample_pdf": _sample_pdf,
    "importance": _importance,
    **{c: _composite(c) for c in ("composite_inf", "composite_bg_white", "composite_shift_lastback",
                                  "composite_relu")},
    "extract_patches": _extract_patches,
    "rays": _rays,
}


@pytest.fixture(scope="module", params=SETS)
def loaded(request):
    fx = load_original_set(request.param)
    G, D = from_original(fx.config, fx.g_state, fx.d_state)
    return fx, G, D


def _assert_every_case_matches(fx: OriginalFixtures, G: Generator, D: Discriminator) -> None:
    assert set(fx.cases) <= set(RUNNERS), f"cases without a runner: {sorted(set(fx.cases) - set(RUNNERS))}"
    errors = {}
    with torch.no_grad():
        for name in fx.cases:
            ours, ref = RUNNERS[name](fx, G, D), fx.outputs(name)
            assert set(ours) == set(ref), name
            errors.update({f"{name}.{k}": rel_err(ours[k], ref[k]) for k in ref})
    worst = max(errors, key=errors.get)
    assert errors[worst] < FIXTURE_TOL, (worst, errors[worst])


def test_every_case_matches_the_original(loaded):
    _assert_every_case_matches(*loaded)



@pytest.mark.parametrize("name", SETS)
def test_state_dict_files_import_with_their_config(name, tmp_path):
    """`epigraf import <set>_G.safetensors --config <set>_config.json` gives the networks from_original builds."""
    fx = load_original_set(name)
    out = tmp_path / "net.safetensors"
    assert main(["import", str(fx.root / f"{name}_G.safetensors"), "--config", str(fx.root / f"{name}_config.json"),
                 "--out", str(out)]) == 0
    G, _ = from_original(fx.config, fx.g_state)
    ours = load_checkpoint(out).G_ema.state_dict()
    assert set(ours) == set(G.state_dict()) and all(torch.equal(v, ours[k]) for k, v in G.state_dict().items())


@pytest.fixture(scope="module", params=SNAPSHOT_SETS)
def imported(request, tmp_path_factory):
    """The set's snapshot pickle through `epigraf import`, hyperparameters read from the pickle itself."""
    fx = load_original_set(request.param)
    out = tmp_path_factory.mktemp("import") / f"{request.param}.safetensors"
    assert main(["import", str(fx.root / f"{request.param}_snapshot.pkl"), "--out", str(out)]) == 0
    return fx, out, load_checkpoint(out)


def test_imported_snapshot_round_trips(imported):
    fx, _, ckpt = imported
    assert ckpt.metadata["config_source"] == "snapshot"
    assert ckpt.config.generator == model_config(fx.config).generator
    assert ckpt.config.discriminator == model_config(fx.config).discriminator
    _assert_every_case_matches(fx, ckpt.G_ema, ckpt.D)
    # The training G is the pickle's own, bit for bit, and not a copy of G_ema.
    name = fx.config["name"]
    ref_g = convert_generator_state(load_file(str(fx.root / f"{name}_snapshot_G.safetensors")))
    ours = ckpt.G.state_dict()
    assert set(ours) == set(ref_g) and all(torch.equal(ours[k], ref_g[k]) for k in ours)
    assert not all(torch.equal(ours[k], ckpt.G_ema.state_dict()[k]) for k in ours)


def test_commands_run_on_the_imported_checkpoint(imported, tmp_path, capsys):
    fx, path, ckpt = imported
    common = ["--checkpoint", str(path), "--seeds", "0", "--resolution", "16", "--ray-step-multiplier", "1"]
    assert main(["generate", *common, "--depth", "--out", str(tmp_path / "gen")]) == 0
    assert (tmp_path / "gen" / "seed0000.png").is_file() and (tmp_path / "gen" / "seed0000_depth.png").is_file()
    assert main(["video", *common, "--frames", "2", "--format", "gif", "--out", str(tmp_path / "vid")]) == 0
    assert len(list((tmp_path / "vid").glob("*.gif"))) == 1
    assert main(["mesh", "--checkpoint", str(path), "--seeds", "0", "--resolution", "16", "--formats", "ply",
                 "--out", str(tmp_path / "mesh")]) == 0
    assert (tmp_path / "mesh" / "seed0000.ply").stat().st_size > 0
    renderer = Renderer(ckpt.G_ema, max_resolution=16)
    image, _ = renderer.render(parse_frame("seed=0&res=16&steps=1", renderer.limits)[0])
    assert image.shape == (16, 16, 3)
    if fx.config["bg_model"] is None:
        assert main(["generate", *common, "--no-background", "--out", str(tmp_path / "nobg")]) == 2
        assert "--no-background: this model has no background model" in capsys.readouterr().err
    else:
        assert main(["generate", *common, "--no-background", "--out", str(tmp_path / "nobg")]) == 0
        assert (tmp_path / "nobg" / "seed0000.png").read_bytes() != (tmp_path / "gen" / "seed0000.png").read_bytes()


def test_sphere_background_is_drawn_and_can_be_left_out():
    fx = load_original_set("bgsphere")
    G, _ = from_original(fx.config, fx.g_state)
    # Black backdrop, so a background that contributes nothing leaves exactly the foreground.
    G.cfg = dataclasses.replace(G.cfg, render=dataclasses.replace(G.cfg.render, white_back=False))
    x = fx.inputs("render_full")
    with torch.no_grad():
        def render(net: Generator):
            return net(x["z"], None, x["camera_angles"], resolution=16, deterministic=True)

        full, fg = render(G), render(without_background(G))
        assert torch.equal(full.depth, fg.depth) and torch.equal(full.opacity, fg.opacity)
        assert (full.image - fg.image).abs().max() > 1e-2  # the background shows through
        empty = copy.deepcopy(G)
        for block in empty.background.blocks:
            block.to_out.weight.zero_()
            block.to_out.bias.zero_()
        assert torch.allclose(render(empty).image, fg.image, atol=1e-6)
    assert G.cfg.render.draw_background  # the view left G alone



def test_plane_background_can_be_left_out_too():
    torch.manual_seed(0)
    G = Generator(tiny_generator_config(background="plane")).eval()
    z, angles = torch.randn(1, 16), torch.tensor([[0.3, 1.3, 0.0]])
    with torch.no_grad():
        full, fg = (net(z, None, angles, deterministic=True) for net in (G, without_background(G)))
        assert torch.equal(full.depth, fg.depth) and (full.image - fg.image).abs().max() > 1e-3
        for block in G.synthesis.blocks.values():  # the 3 backdrop channels of every to-planes layer → 0
            block.torgb.weight[24:] = 0
            block.torgb.bias[24:] = 0
        assert torch.allclose(G(z, None, angles, deterministic=True).image, fg.image, atol=1e-6)


def test_pose_cond_trains_a_fourier_pose_conditioned_d_with_gpc(tmp_path):
    make_dataset(tmp_path / "data")
    result = train(options(tmp_path, kimg=0.004, tick_kimg=0.004, pose_cond=True), tiny_model_config())
    ckpt = load_checkpoint(sorted(result.run_dir.glob("network-*.safetensors"))[-1])
    d, g = ckpt.config.discriminator, ckpt.config.generator
    assert d.camera_cond and not d.camera_cond_raw and d.camera_cond_drop_p == 0.5 and g.camera_cond
    assert ckpt.D.head_mapping.embed.in_features == 828 + 24  # patch embedding + Fourier camera features
    assert ckpt.G.mapping.camera_cond
    assert all(torch.isfinite(p).all() for p in ckpt.D.parameters())
