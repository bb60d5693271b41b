"""Generator: equivalence with the original (fixture groups a–d, f) and docs/method.md §11 properties 1 and 9."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from conftest import rel_err
from epigraf.cameras import Cameras
from epigraf.compat.original import from_original
from epigraf.config import GeneratorConfig, RenderConfig, preset
from epigraf.nn import field
from epigraf.nn.field import TriPlaneMLP, mean_triplane_features, sample_triplanes, split_planes
from epigraf.nn.generator import Generator
from epigraf.nn.layers import fir_filter_2d, upsample2d
from epigraf.nn.synthesis import SynthesisBlock, SynthesisLayer
from epigraf.patches import PatchParams


@pytest.fixture(scope="module")
def tiny(original_fixtures):
    G, D = from_original(original_fixtures.config, original_fixtures.g_state, original_fixtures.d_state)
    return G, D


def tiny_generator_config(**render) -> GeneratorConfig:
    return GeneratorConfig(
        z_dim=16, w_dim=16, image_resolution=32, patch_resolution=16, triplane_resolution=32, triplane_channels=8,
        channel_base=256, channel_max=16, mlp_hidden=16, render=RenderConfig(num_ray_steps=8, **render),
    )


# ----------------------------------------------------------------------------- fixture equivalence


@pytest.mark.parametrize("case, psi", [("mapping_psi1", 1.0), ("mapping_psi07", 0.7)])
def test_mapping_matches_original(tiny, original_fixtures, case, psi):
    inputs = original_fixtures.inputs(case)
    ws = tiny[0].mapping(inputs["z"], None, truncation_psi=psi)
    assert rel_err(ws, original_fixtures.outputs(case)["ws"]) < 1e-4


def test_triplanes_match_original(tiny, original_fixtures):
    ws = original_fixtures.inputs("triplanes")["ws"]
    with torch.no_grad():
        planes = tiny[0].synthesize(ws, noise_mode="const")
    assert rel_err(planes, original_fixtures.outputs("triplanes")["planes"]) < 1e-4


def test_full_render_matches_original(tiny, original_fixtures):
    x = original_fixtures.inputs("render_full")
    with torch.no_grad():
        out = tiny[0](x["z"], None, x["camera_angles"], deterministic=True)
    ref = original_fixtures.outputs("render_full")
    assert rel_err(out.image, ref["image"]) < 1e-4
    assert rel_err(out.depth, ref["depth"]) < 1e-4


def test_patch_render_matches_original(tiny, original_fixtures):
    x = original_fixtures.inputs("render_patch")
    pp = PatchParams(x["patch_scales"], x["patch_offsets"])
    G = tiny[0]
    with torch.no_grad():
        out = G(x["z"], None, x["camera_angles"], patch_params=pp, deterministic=True)
    ref = original_fixtures.outputs("render_patch")
    assert out.image.shape[-1] == original_fixtures.config["patch_resolution"]
    assert rel_err(out.image, ref["image"]) < 1e-4
    assert rel_err(out.depth, ref["depth"]) < 1e-4


def _block_state(original_fixtures, prefix):
    return {k[len(prefix):]: v for k, v in original_fixtures.g_state.items()
            if k.startswith(prefix) and not k.endswith("resample_filter")}


def test_modulated_upsampling_layer_matches_original(original_fixtures):
    layer = SynthesisLayer(32, 32, 32, 8, up=True)
    layer.load_state_dict(_block_state(original_fixtures, "synthesis.tri_plane_decoder.b8.conv0."))
    x = original_fixtures.inputs("synth_layer_up")
    out = layer(x["x"], x["w"], noise_mode="const")
    assert rel_err(out, original_fixtures.outputs("synth_layer_up")["out"]) < 1e-4


def test_synthesis_block_matches_original(original_fixtures):
    block = SynthesisBlock(32, 32, 32, 8, 24)
    block.load_state_dict(_block_state(original_fixtures, "synthesis.tri_plane_decoder.b8."))
    x = original_fixtures.inputs("synth_block")
    out_x, out_img = block(x["x"], x["img"], x["ws"], noise_mode="const")
    ref = original_fixtures.outputs("synth_block")
    assert rel_err(out_x, ref["x"]) < 1e-4
    assert rel_err(out_img, ref["img"]) < 1e-4


def test_fir_upsampling_matches_original(original_fixtures):
    ref = original_fixtures.outputs("upsample2d")
    assert rel_err(fir_filter_2d(), ref["filter"]) < 1e-7
    assert rel_err(upsample2d(original_fixtures.inputs("upsample2d")["x"], fir_filter_2d()), ref["out"]) < 1e-4


def test_triplane_query_mlp_and_render_match_original(tiny, original_fixtures):
    x = original_fixtures.inputs("triplane_query")
    planes, coords = x["planes"], x["coords"]
    b, c, h, w = planes.shape
    per_plane = sample_triplanes(planes.reshape(b, 3, c // 3, h, w), coords, cube_scale=0.2).transpose(2, 3)
    ref = original_fixtures.outputs("triplane_query")
    assert rel_err(per_plane, ref["per_plane"]) < 1e-4
    assert rel_err(per_plane.mean(dim=1), ref["mean"]) < 1e-4

    mlp = tiny[0].field.mlp
    feats = original_fixtures.inputs("mlp_decode")["feats"]
    assert rel_err(mlp(feats.mean(dim=1)), original_fixtures.outputs("mlp_decode")["out"]) < 1e-4
    field_out = tiny[0].field(planes.reshape(b, 3, c // 3, h, w), coords)
    assert rel_err(field_out, original_fixtures.outputs("triplane_render")["out"]) < 1e-4


# ----------------------------------------------------------------------------- docs/method.md §11 properties


def test_property_1_patch_render_is_a_crop_of_the_full_render():
    torch.manual_seed(3)
    cfg = tiny_generator_config()
    G = Generator(cfg).eval()
    R, r = cfg.image_resolution, cfg.patch_resolution
    z = torch.randn(3, cfg.z_dim)
    angles = torch.tensor([[0.2, 1.4, 0.0], [-0.5, 1.9, 0.0], [2.0, 1.0, 0.0]])
    a, b = [0, 7, R - r], [3, 0, R - r]
    pp = PatchParams(torch.full((3, 2), (r - 1) / (R - 1)),
                     torch.tensor([[a[i] / (R - 1), b[i] / (R - 1)] for i in range(3)]))
    with torch.no_grad():
        full = G(z, None, angles, deterministic=True)
        patch = G(z, None, angles, patch_params=pp, deterministic=True)
    for i in range(3):
        crop = full.image[i, :, R - r - b[i] : R - b[i], a[i] : a[i] + r]
        assert torch.allclose(patch.image[i], crop, atol=1e-5)
        crop_depth = full.depth[i, :, R - r - b[i] : R - b[i], a[i] : a[i] + r]
        assert torch.allclose(patch.depth[i], crop_depth, atol=1e-5)


@pytest.mark.parametrize("coord, expected", [("col", lambda p: (p[..., 0] + p[..., 0] + p[..., 1])),
                                             ("row", lambda p: (p[..., 1] + p[..., 2] + p[..., 2]))])
def test_property_9_triplane_query(coord, expected):
    cs, res = 0.2, 64
    u = -1 + 2 * torch.arange(res, dtype=torch.float32) / (res - 1)
    planes = torch.zeros(1, 3, 2, res, res)
    planes[:, :, 0] = u[None, :] if coord == "col" else u[:, None]
    points = (torch.rand(1, 500, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1) * cs
    feats = sample_triplanes(planes, points, cs).mean(dim=1)
    assert torch.allclose(feats[0, 0], expected(points[0]) / (3 * cs), atol=1e-5)


@pytest.mark.parametrize("feature_last", [True, False], ids=["split_planes", "channel-first"])
def test_cpu_corner_gather_equals_bilinear_sampling_in_values_and_gradients(feature_last):
    """The CPU path of the field's input (one gather of 12 corners) against the grid sampler's, points outside
    the planes and on their edges included; non-square planes catch a row/column swap."""
    g = torch.Generator().manual_seed(0)
    cs, b, f, h, w = 0.3, 2, 5, 7, 9
    decoder_out = torch.randn(b, 3 * f, h, w, dtype=torch.float64, generator=g)
    planes = split_planes(decoder_out, f) if feature_last else decoder_out.reshape(b, 3, f, h, w)
    planes.requires_grad_(True)
    points = (torch.rand(b, 200, 3, dtype=torch.float64, generator=g) * 2.6 - 1.3) * cs
    points[0, :8] = torch.tensor([[x, y, z] for x in (-cs, cs) for y in (-cs, cs) for z in (-cs, cs)])
    points[1, :3] = torch.tensor([[0.0, 0.0, 0.0], [cs, 0.0, -cs], [2 * cs, 0.0, 0.0]])
    points.requires_grad_(True)
    ours = mean_triplane_features(planes, points, cs)
    reference = sample_triplanes(planes, points, cs).mean(dim=1).transpose(1, 2)
    assert ours.shape == (b, 200, f)
    assert torch.allclose(ours, reference, atol=1e-12)
    cotangent = torch.randn(ours.shape, dtype=torch.float64, generator=g)
    for a, r in zip(torch.autograd.grad(ours, (planes, points), cotangent),
                    torch.autograd.grad(reference, (planes, points), cotangent), strict=True):
        assert torch.allclose(a, r, atol=1e-10)


def test_cpu_corner_gather_point_gradient_without_a_plane_gradient():
    """Fixed planes (no cells computed for them): the points' gradient is still the grid sampler's."""
    g = torch.Generator().manual_seed(4)
    planes = split_planes(torch.randn(2, 3 * 4, 6, 7, dtype=torch.float64, generator=g), 4)
    points = ((torch.rand(2, 60, 3, dtype=torch.float64, generator=g) * 2.4 - 1.2) * 0.3).requires_grad_(True)
    cotangent = torch.randn(2, 60, 4, dtype=torch.float64, generator=g)
    ours = torch.autograd.grad(mean_triplane_features(planes, points, 0.3), points, cotangent)[0]
    reference = sample_triplanes(planes, points, 0.3).mean(dim=1).transpose(1, 2)
    assert torch.allclose(ours, torch.autograd.grad(reference, points, cotangent)[0], atol=1e-10)


def test_cpu_corner_gather_gradient_in_chunks_is_bitwise_the_one_pass_gradient(monkeypatch):
    """The gradient is accumulated over chunks of points to bound its temporary; the additions keep their order."""
    g = torch.Generator().manual_seed(2)
    planes = split_planes(torch.randn(2, 3 * 4, 6, 6, generator=g), 4).requires_grad_(True)
    points = (torch.rand(2, 50, 3, generator=g) * 2.2 - 1.1) * 0.3
    cotangent = torch.randn(2, 50, 4, generator=g)

    def gradient():
        return torch.autograd.grad(mean_triplane_features(planes, points, 0.3), planes, cotangent)[0]

    one_pass = gradient()
    monkeypatch.setattr(field, "CORNER_GRADIENT_CHUNK_VALUES", 12 * 4 * 7)  # chunks of 7 points, the last short
    assert torch.equal(gradient(), one_pass)


def test_cpu_corner_gather_has_a_second_derivative():
    g = torch.Generator().manual_seed(1)
    planes = torch.randn(1, 3, 2, 4, 4, dtype=torch.float64, generator=g, requires_grad=True)
    points = ((torch.rand(1, 6, 3, dtype=torch.float64, generator=g) * 2 - 1) * 0.2).requires_grad_(True)
    assert torch.autograd.gradgradcheck(lambda p, x: mean_triplane_features(p, x, 0.2), (planes, points))


def test_property_9_shapes_of_the_paper_generator():
    with torch.device("meta"):
        G = Generator(preset("ffhq256").generator)
    assert G.num_ws == 16
    assert [blk.weight.shape for blk in G.field.mlp.model] == [torch.Size([64, 32]), torch.Size([4, 64])]
    assert G.synthesis.blocks["b512"].torgb.weight.shape[0] == 96
    with torch.device("meta"):
        planes = G.synthesize(torch.zeros(2, 16, 512))
    assert planes.shape == (2, 96, 512, 512)


def test_mlp_layers_follow_config():
    mlp = TriPlaneMLP(8, hidden=16, num_layers=3)
    assert [m.weight.shape for m in mlp.model] == [torch.Size([16, 8]), torch.Size([16, 16]), torch.Size([4, 16])]
    assert [m.activation for m in mlp.model] == [True, True, False]


# ----------------------------------------------------------------------------- behaviour


def test_deterministic_render_is_bit_identical_and_random_render_is_not():
    torch.manual_seed(0)
    G = Generator(tiny_generator_config()).eval()
    z, angles = torch.randn(2, 16), torch.tensor([[0.1, 1.5, 0.0], [0.4, 1.2, 0.0]])
    with torch.no_grad():
        a = G(z, None, angles, deterministic=True, noise_mode="random").image
        b = G(z, None, angles, deterministic=True, noise_mode="random").image
        c = G(z, None, angles, deterministic=False).image
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def generator_and_chunked_twin(chunk_rays: int = 100) -> tuple[Generator, Generator]:
    """A tiny generator (seed 0) and the same weights rendering ``chunk_rays`` rays at a time, both in eval mode."""
    torch.manual_seed(0)
    cfg = tiny_generator_config()
    G = Generator(cfg).eval()
    G_chunked = Generator(dataclasses.replace(cfg, render=dataclasses.replace(cfg.render, chunk_rays=chunk_rays)))
    G_chunked.load_state_dict(G.state_dict())
    return G, G_chunked.eval()


def test_chunked_rendering_equals_unchunked():
    G, G_chunked = generator_and_chunked_twin()
    z, angles = torch.randn(1, 16), torch.tensor([[0.3, 1.3, 0.0]])
    with torch.no_grad():
        assert torch.allclose(G(z, None, angles, deterministic=True).image,
                              G_chunked(z, None, angles, deterministic=True).image, atol=1e-6)


def test_render_from_cached_planes_equals_forward():
    torch.manual_seed(0)
    G = Generator(tiny_generator_config()).eval()
    z, angles = torch.randn(2, 16), torch.tensor([[0.1, 1.5, 0.0], [0.4, 1.2, 0.0]])
    with torch.no_grad():
        planes = G.synthesize(G.mapping(z, None))
        direct = G(z, None, angles, deterministic=True)
        cached = G.render(planes, Cameras.from_angles(angles, 12.0, 1.0), deterministic=True)
    assert torch.equal(direct.image, cached.image)


def test_resolution_and_camera_overrides():
    torch.manual_seed(0)
    G = Generator(tiny_generator_config()).eval()
    z, angles = torch.randn(1, 16), torch.tensor([[0.0, math.pi / 2, 0.0]])
    with torch.no_grad():
        out = G(z, None, angles, resolution=20, fov=20.0, radius=1.05, deterministic=True)
    assert out.image.shape == (1, 3, 20, 20) and out.depth.shape == (1, 1, 20, 20)
    assert ((out.opacity > 0.99) & (out.opacity < 1 + 1e-5)).all()  # no background model: rays terminate


def test_input_angles_are_not_mutated():
    G = Generator(tiny_generator_config()).eval()
    angles = torch.tensor([[0.0, 0.0, 0.0]])
    with torch.no_grad():
        G(torch.randn(1, 16), None, angles, deterministic=True)
    assert angles[0, 1].item() == 0.0


def test_plane_background_renders_patches_consistently():
    torch.manual_seed(0)
    cfg = tiny_generator_config(background="plane")
    G = Generator(cfg).eval()
    assert G.synthesis.blocks["b4"].torgb.weight.shape[0] == 3 * 8 + 3
    R, r = cfg.image_resolution, cfg.patch_resolution
    pp = PatchParams(torch.full((1, 2), (r - 1) / (R - 1)), torch.tensor([[4 / (R - 1), 2 / (R - 1)]]))
    z, angles = torch.randn(1, 16), torch.tensor([[0.3, 1.3, 0.0]])
    with torch.no_grad():
        full = G(z, None, angles, deterministic=True).image
        patch = G(z, None, angles, patch_params=pp, deterministic=True).image
    assert torch.allclose(patch[0], full[0, :, R - r - 2 : R - 2, 4 : 4 + r], atol=1e-5)


def test_pose_conditioned_mapping_uses_mean_pose_when_no_camera_given():
    torch.manual_seed(0)
    cfg = dataclasses.replace(tiny_generator_config(), camera_cond=True, mean_camera_pose=(0.2, 1.3, 0.0))
    G = Generator(cfg).eval()
    z = torch.randn(2, 16)
    assert G.mapping.embed.in_features == 2
    default = G.mapping(z, None)
    explicit = G.mapping(z, None, camera_angles=torch.tensor([[0.2, 1.3, 0.0]] * 2))
    other = G.mapping(z, None, camera_angles=torch.tensor([[-0.5, 1.0, 0.0]] * 2))
    assert torch.allclose(default, explicit) and not torch.allclose(default, other)


def test_class_conditional_generator_requires_labels():
    cfg = dataclasses.replace(tiny_generator_config(), c_dim=5)
    G = Generator(cfg).eval()
    with pytest.raises(ValueError, match=r"conditional: c must be \[1, 5\]"):
        G.mapping(torch.randn(1, 16), None)
    assert G.mapping(torch.randn(1, 16), torch.eye(5)[:1]).shape == (1, G.num_ws, 16)


def test_w_avg_tracks_the_mapped_batch_only_when_asked():
    G = Generator(tiny_generator_config())
    z = torch.randn(8, 16)
    G.mapping(z, None)
    assert torch.count_nonzero(G.mapping.w_avg) == 0
    w = G.mapping(z, None, update_emas=True)[:, 0]
    assert torch.allclose(G.mapping.w_avg, w.mean(dim=0) * (1 - 0.998), atol=1e-6)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("kwargs, match", [
    ({"z": torch.randn(2, 7)}, r"z must be \[B, 16\]"),
    ({"camera_angles": torch.zeros(2, 2)}, r"camera_angles must be \[2, 3\]"),
    ({"camera_angles": torch.tensor([[0.0, 90.0, 0.0]] * 2)}, r"pitch must be in \[0, π\]"),
    ({"camera_angles": torch.tensor([[0.0, -0.5, 0.0]] * 2)}, r"pitch must be in \[0, π\]"),
    ({"patch_params": PatchParams(torch.full((3, 2), 0.5), torch.zeros(3, 2))}, r"3 patch params for a batch of 2"),
])
def test_bad_inputs_raise_clear_errors(kwargs, match):
    G = Generator(tiny_generator_config()).eval()
    args = {"z": torch.randn(2, 16), "c": None, "camera_angles": torch.tensor([[0.0, 1.5, 0.0]] * 2)}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        G(**args)


def test_pitch_at_the_poles_is_clamped_not_rejected():
    G = Generator(tiny_generator_config()).eval()
    with torch.no_grad():
        out = G(torch.randn(2, 16), None, torch.tensor([[0.0, 0.0, 0.0], [1.0, math.pi, 0.0]]), deterministic=True)
    assert torch.isfinite(out.image).all()


def test_bad_noise_mode_is_rejected():
    G = Generator(tiny_generator_config()).eval()
    with pytest.raises(ValueError, match="noise_mode must be one of"):
        G(torch.randn(1, 16), None, torch.tensor([[0.0, 1.5, 0.0]]), noise_mode="sometimes")



def test_sphere_background_adds_ws_slots_and_renders_behind_the_foreground():
    torch.manual_seed(0)
    cfg = tiny_generator_config(background="sphere")
    G = Generator(cfg).eval()
    assert G.num_ws == G.synthesis.num_ws + 4
    z, angles = torch.randn(1, 16), torch.tensor([[0.3, 1.3, 0.0]])
    with torch.no_grad():
        ws = G.mapping(z, None)
        planes = G.synthesize(ws)
        cams = G.cameras(angles)
        with_bg = G.render(planes, cams, deterministic=True, ws=ws)
        ws_other = ws.clone()
        ws_other[:, G.synthesis.num_ws :] += 1.0
        other_bg = G.render(planes, cams, deterministic=True, ws=ws_other)
    # Only the background changed: pixels differ exactly where the foreground lets light through.
    diff = (with_bg.image - other_bg.image).abs().amax(dim=1, keepdim=True)
    assert diff.max() > 1e-4
    assert torch.equal(with_bg.depth, other_bg.depth)
    with pytest.raises(ValueError, match="needs ws in render"):
        G.render(planes, cams, deterministic=True)


@pytest.mark.parametrize("open_far_end", [False, True])
def test_open_far_end_lets_empty_rays_show_white(open_far_end):
    """An empty field (density shifted far below zero) renders white through an open far end. A closed one (the
    original's last interval of 1e10) stops every ray at its last sample, whose colour then fills the pixel: the
    opaque backdrop a generator can paint views on."""
    torch.manual_seed(0)
    G = Generator(tiny_generator_config(white_back=True, density_shift=-12.0, open_far_end=open_far_end)).eval()
    with torch.no_grad():
        out = G(torch.randn(2, 16), None, torch.tensor([[0.3, 1.4, 0.0], [-1.0, 2.0, 0.0]]), deterministic=True)
    if open_far_end:
        torch.testing.assert_close(out.image, torch.ones_like(out.image), atol=1e-3, rtol=0)
        assert out.opacity.max() < 1e-3
    else:
        torch.testing.assert_close(out.opacity, torch.ones_like(out.opacity), atol=1e-5, rtol=0)
        assert (out.image - 1).abs().amax() > 0.1


def test_density_gain_scales_the_raw_density_only():
    torch.manual_seed(0)
    cfg = tiny_generator_config()
    G, G_gain = Generator(cfg).eval(), Generator(dataclasses.replace(cfg, density_gain=10.0)).eval()
    G_gain.load_state_dict(G.state_dict())
    feats = split_planes(torch.randn(2, 3 * cfg.triplane_channels, 32, 32), cfg.triplane_channels)
    points = torch.rand(2, 50, 3) * 0.4 - 0.2
    plain, gained = G.field(feats, points), G_gain.field(feats, points)
    assert torch.equal(gained[..., :3], plain[..., :3])
    torch.testing.assert_close(gained[..., 3], plain[..., 3] * 10)
    with pytest.raises(ValueError, match="density_gain must be positive"):
        dataclasses.replace(cfg, density_gain=0.0)


def test_distortion_is_rendered_only_when_asked_and_chunks_agree():
    G, G_chunked = generator_and_chunked_twin()
    z, angles = torch.randn(2, 16), torch.tensor([[0.1, 1.5, 0.0], [0.4, 1.2, 0.0]])
    with torch.no_grad():
        assert G(z, None, angles, deterministic=True).distortion is None
        whole = G(z, None, angles, deterministic=True, with_distortion=True)
        chunked = G_chunked(z, None, angles, deterministic=True, with_distortion=True)
    assert whole.distortion.shape == whole.opacity.shape
    assert (whole.distortion >= 0).all() and whole.distortion.max() > 0
    torch.testing.assert_close(whole.distortion, chunked.distortion, atol=1e-6, rtol=0)
