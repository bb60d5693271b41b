"""Samplers, compositing and schedules: docs/method.md §11 properties 8 and 10 and the original's fixture cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from epigraf import schedules
from epigraf.config import PatchConfig
from epigraf.render.compositing import composite, density_activation, weight_distortion
from epigraf.render.samplers import coarse_depths, importance_depths, sample_pdf

# Property 8 ----------------------------------------------------------------------------------------


def _random_rays(generator: torch.Generator, rays: int = 64, k: int = 12, scale: float = 3.0):
    depths = torch.sort(0.8 + 0.4 * torch.rand(rays, k, generator=generator), dim=-1).values
    raw = torch.randn(rays, k, generator=generator) * scale
    colors = torch.randn(rays, k, 3, generator=generator)
    return colors, raw, depths


@pytest.mark.parametrize("last_delta", [1e10, 1e-3])
def test_weights_sum_at_most_one(last_delta, torch_generator):
    colors, raw, depths = _random_rays(torch_generator, scale=10.0)
    w = composite(colors, raw, depths, last_delta).weights
    assert (w >= 0).all()
    assert (w.sum(-1) <= 1 + 1e-6).all()


@pytest.mark.parametrize("sigma", [0.1, 2.0, 30.0])
def test_constant_density_weights_sum(sigma):
    depths = torch.tensor([[0.9, 0.93, 0.97, 1.0, 1.05, 1.1]])
    raw = torch.full_like(depths, math.log(math.expm1(sigma)))  # softplus⁻¹(σ)
    last_delta = 1e-3
    total = composite(torch.zeros(1, 6, 3), raw, depths, last_delta).weights.sum(-1)
    path = (depths[0, -1] - depths[0, 0]).item() + last_delta
    torch.testing.assert_close(total, torch.tensor([1 - math.exp(-sigma * path)]), rtol=1e-5, atol=0)


@pytest.mark.parametrize("last_sigma", [1e-6, 1e-3, 5.0])
def test_infinite_last_interval_is_opaque(last_sigma, torch_generator):
    colors, raw, depths = _random_rays(torch_generator)
    raw[:, -1] = math.log(math.expm1(last_sigma))
    colour = torch.tensor([0.3, -0.7, 0.9])
    out = composite(colour.expand_as(colors), raw, depths, 1e10)
    torch.testing.assert_close(out.weights.sum(-1), torch.ones(len(raw)), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.color, colour.expand(len(raw), 3), atol=1e-6, rtol=0)


def test_white_back(torch_generator):
    colors, raw, depths = _random_rays(torch_generator)
    plain = composite(colors, raw - 4, depths, 1e-3)
    white = composite(colors, raw - 4, depths, 1e-3, white_back=True)
    w = plain.weights
    torch.testing.assert_close(white.color, (w[..., None] * colors).sum(-2) + 1 - w.sum(-1, keepdim=True))
    assert (1 - w.sum(-1)).min() > 1e-3  # the check above is not vacuous


def test_depth_is_weighted_sum_within_bounds(torch_generator):
    colors, raw, depths = _random_rays(torch_generator)
    for last_delta in (1e10, 1e-3):
        out = composite(colors, raw, depths, last_delta)
        assert out.depth.shape == (len(raw), 1)
        torch.testing.assert_close(out.depth[:, 0], (out.weights * depths).sum(-1))
        assert (out.depth >= 0).all() and (out.depth <= depths.max()).all()


@pytest.mark.parametrize("shift", [0.0, -1.0, 2.5])
def test_density_activation(shift, torch_generator):
    raw = torch.randn(50, generator=torch_generator) * 30
    torch.testing.assert_close(density_activation(raw, shift), F.softplus(raw + shift), atol=0, rtol=0)
    torch.testing.assert_close(density_activation(raw, shift, "relu"), F.relu(raw + shift), atol=0, rtol=0)
    with pytest.raises(ValueError):
        density_activation(raw, shift, "exp")


def test_composite_applies_shift_before_activation():
    depths = torch.tensor([[1.0, 1.5]])
    raw = torch.tensor([[0.2, 0.0]])
    w = composite(torch.zeros(1, 2, 3), raw, depths, 1e10, density_shift=-1.0).weights
    alpha0 = 1 - math.exp(-0.5 * math.log1p(math.exp(0.2 - 1.0)))
    assert w[0, 0].item() == pytest.approx(alpha0, rel=1e-6)


def test_last_back_and_final_transmittance(torch_generator):
    colors, raw, depths = _random_rays(torch_generator)
    plain = composite(colors, raw - 4, depths, 1e-3)
    back = composite(colors, raw - 4, depths, 1e-3, last_back=True)
    torch.testing.assert_close(back.weights.sum(-1), torch.ones(len(raw)))
    torch.testing.assert_close(back.weights[:, :-1], plain.weights[:, :-1], atol=0, rtol=0)
    alpha = plain.weights[:, -1:] / plain.final_transmittance
    sigma = F.softplus(raw[:, -1:] - 4)
    torch.testing.assert_close(alpha, 1 - torch.exp(-1e-3 * sigma), rtol=1e-4, atol=1e-9)


def test_noise_uses_generator(torch_generator):
    colors, raw, depths = _random_rays(torch_generator)
    a = composite(colors, raw, depths, 1e-3, noise_std=1.0, generator=torch.Generator().manual_seed(3))
    b = composite(colors, raw, depths, 1e-3, noise_std=1.0, generator=torch.Generator().manual_seed(3))
    c = composite(colors, raw, depths, 1e-3)
    assert torch.equal(a.color, b.color) and not torch.equal(a.color, c.color)


# Fixture cases -------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["composite_inf", "composite_bg_white", "composite_shift_lastback",
                                  "composite_relu"])
def test_composite_fixture(case, original_fixtures, rel_err):
    fx = original_fixtures
    kw, inputs, ref = fx.kwargs(case), fx.inputs(case), fx.outputs(case)
    rgb_sigma, z = inputs["rgb_sigma"], inputs["z_vals"][..., 0]
    out = composite(
        rgb_sigma[..., :-1], rgb_sigma[..., -1], z,
        last_delta=1e10 if kw["use_inf_depth"] else 1e-3,
        density_shift=kw["density_shift"], clamp_mode=kw["clamp_mode"], noise_std=kw["noise_std"],
        white_back=kw["white_back_end_idx"] > 0, last_back=kw["last_back"],
    )
    errors = {
        "rendered_feats": rel_err(out.color, ref["rendered_feats"]),
        "depth": rel_err(out.depth, ref["depth"]),
        "weights": rel_err(out.weights[..., None], ref["weights"]),
        "final_transmittance": rel_err(out.final_transmittance[..., 0], ref["final_transmittance"]),
    }
    assert set(errors) == set(ref)
    assert max(errors.values()) < fx.tol, errors


def test_sample_pdf_fixture(original_fixtures, rel_err):
    fx = original_fixtures
    kw, inputs = fx.kwargs("sample_pdf"), fx.inputs("sample_pdf")
    out = sample_pdf(inputs["bins"], inputs["weights"], kw["N_importance"], deterministic=kw["det"],
                     eps=kw["eps"])
    assert rel_err(out, fx.outputs("sample_pdf")["samples"]) < fx.tol


def test_importance_fixture(original_fixtures, rel_err):
    fx = original_fixtures
    kw, inputs = fx.kwargs("importance"), fx.inputs("importance")
    out = importance_depths(inputs["z_coarse"], inputs["weights_coarse"], kw["N_importance"],
                            deterministic=kw["det"])
    assert rel_err(out, fx.outputs("importance")["z_fine"]) < fx.tol


# Samplers ------------------------------------------------------------------------------------------


def test_coarse_depths_deterministic_is_linspace():
    z = coarse_depths(0.88, 1.12, 8, (2, 3), deterministic=True)
    assert z.shape == (2, 3, 8)
    assert torch.equal(z, torch.linspace(0.88, 1.12, 8).expand(2, 3, 8))
    assert torch.equal(z, coarse_depths(0.88, 1.12, 8, (2, 3), deterministic=True))


def test_stratified_depths_in_their_bins(torch_generator):
    n = 10
    z = coarse_depths(0.75, 1.25, n, (500,), deterministic=False, generator=torch_generator)
    lin = torch.linspace(0.75, 1.25, n)
    mids = (lin[1:] + lin[:-1]) / 2
    lower, upper = torch.cat([lin[:1], mids]), torch.cat([mids, lin[-1:]])
    assert (z >= lower).all() and (z <= upper).all()
    assert (z[:, 1:] >= z[:, :-1]).all()
    assert not torch.equal(z[0], z[1])
    # The samples fill their bins: each bin's sample spread reaches close to its edges.
    assert ((z.amin(0) - lower) < 0.01 * (upper - lower)).all()
    assert ((upper - z.amax(0)) < 0.01 * (upper - lower)).all()


def test_sample_pdf_properties(torch_generator):
    bins = torch.linspace(0, 1, 5).expand(3, 5)
    weights = torch.tensor([[0.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 2.0]])
    det = sample_pdf(bins, weights, 9, deterministic=True)
    assert torch.equal(det, sample_pdf(bins, weights, 9, deterministic=True))
    torch.testing.assert_close(det[1], torch.linspace(0, 1, 9))  # uniform pdf: identity inverse cdf
    rnd = sample_pdf(bins, weights, 4000, deterministic=False, generator=torch_generator)
    assert ((rnd[0] >= 0.25) & (rnd[0] <= 0.5)).float().mean() > 0.99
    assert ((rnd[2] >= 0.75) & (rnd[2] <= 1.0)).float().mean() > 0.99
    with pytest.raises(ValueError):
        sample_pdf(bins, weights[:, :3], 4, deterministic=True)


def test_importance_depths_detached_and_focused():
    z = torch.linspace(0.8, 1.2, 9).expand(2, 9).clone().requires_grad_(True)
    w = torch.zeros(2, 9)
    w[:, 4] = 1.0
    w = w.requires_grad_(True)
    fine = importance_depths(z, w, 16, deterministic=True)
    assert not fine.requires_grad and fine.shape == (2, 16)
    mids = (z[0, 1:] + z[0, :-1]).detach() / 2
    inside = (fine >= mids[3] - 1e-6) & (fine <= mids[4] + 1e-6)
    assert inside.float().mean() > 0.8


# Property 10: schedules ----------------------------------------------------------------------------


def test_nerf_noise_schedule():
    assert schedules.nerf_noise_std(0) == 1.0
    assert schedules.nerf_noise_std(2500) == pytest.approx(0.5)
    assert schedules.nerf_noise_std(5000) == 0.0 and schedules.nerf_noise_std(9000) == 0.0
    with pytest.raises(ValueError):
        schedules.nerf_noise_std(-1)


def test_blur_schedule_and_kernel():
    assert schedules.blur_sigma(0) == 10.0
    assert schedules.blur_sigma(100) == pytest.approx(5.0)
    assert schedules.blur_sigma(200) == 0.0 and schedules.blur_sigma(1000) == 0.0
    assert torch.equal(schedules.blur_kernel(0.0), torch.ones(1))
    k = schedules.blur_kernel(10.0)
    assert k.shape == (61,)
    t = torch.arange(-30, 31, dtype=torch.float64)
    expected = 2.0 ** (-((t / 10) ** 2))
    torch.testing.assert_close(k.double(), expected / expected.sum(), atol=1e-7, rtol=0)
    assert schedules.blur_kernel(1.5).shape == (9,)  # floor(4.5) = 4 taps each side


def test_ema_beta():
    assert schedules.ema_beta(64, 0) == 0.0
    assert schedules.ema_beta(64, 10**9) == pytest.approx(0.5 ** (64 / 20000))
    assert schedules.ema_beta(64, 100_000) == pytest.approx(0.5 ** (64 / 5000))
    assert schedules.ema_beta(64, 0, rampup=None) == pytest.approx(0.5 ** (64 / 20000))


def test_gpc_spoof_prob():
    assert schedules.gpc_spoof_prob(0) == 1.0
    assert schedules.gpc_spoof_prob(500) == pytest.approx(0.75)
    assert schedules.gpc_spoof_prob(1000) == pytest.approx(0.5)
    assert schedules.gpc_spoof_prob(5000) == pytest.approx(0.5)


def test_d_adam_lazy_reg_constants():
    lr, (b1, b2) = schedules.adam_settings_for_lazy_reg(0.002, (0.0, 0.99), 16)
    assert lr == pytest.approx(0.0018824, abs=1e-7)
    assert b1 == 0.0 and b2 == pytest.approx(0.990585, abs=1e-6)


def test_patch_schedules():
    cfg = PatchConfig(image_resolution=512, resolution=64)
    assert schedules.patch_beta(0, cfg) == pytest.approx(0.001)
    assert schedules.patch_beta(5000, cfg) == pytest.approx(0.001 + 0.799 / 2)
    assert schedules.patch_beta(20000, cfg) == pytest.approx(0.8)
    assert schedules.patch_min_scale(0, cfg) == 1.0
    assert schedules.patch_min_scale(5000, cfg) == pytest.approx(0.5625)
    assert schedules.patch_min_scale(10000, cfg) == pytest.approx(0.125)


def _brute_force_distortion(weights, depths, near, far):
    s = (depths - near) / (far - near)
    widths = torch.cat([s[1:] - s[:-1], s.new_zeros(1)])
    mids = s + widths / 2
    pairs = (weights[:, None] * weights[None, :] * (mids[:, None] - mids[None, :]).abs()).sum()
    return pairs + (weights.square() * widths).sum() / 3


def test_weight_distortion_equals_its_quadratic_definition(torch_generator):
    depths = torch.sort(torch.rand(3, 5, 24, generator=torch_generator) * 0.5 + 0.75, dim=-1).values
    weights = torch.rand(3, 5, 24, generator=torch_generator) / 24
    fast = weight_distortion(weights, depths, 0.75, 1.25)
    assert fast.shape == (3, 5, 1)
    for i in range(3):
        for j in range(5):
            torch.testing.assert_close(fast[i, j, 0], _brute_force_distortion(weights[i, j], depths[i, j], 0.75, 1.25))


def test_weight_distortion_is_low_at_a_surface_and_high_in_a_haze():
    """One opaque surface < a soft body < the same weight spread along the whole ray; an empty ray scores 0."""
    depths = torch.linspace(0.75, 1.25, 32)
    deltas = torch.cat([depths[1:] - depths[:-1], torch.tensor([1e-3])])

    def weights(sigma: float) -> Tensor:
        alpha = 1 - torch.exp(-deltas * torch.where(depths > 0.95, sigma, 0.0))
        return alpha * torch.cumprod(torch.cat([torch.ones(1), 1 - alpha[:-1]]), 0)

    surface, soft, haze = (weight_distortion(w, depths, 0.75, 1.25).item()
                           for w in (weights(1000.0), weights(20.0), torch.full((32,), 1 / 32)))
    assert surface < 0.02 < soft < haze
    assert weight_distortion(torch.zeros(32), depths, 0.75, 1.25).item() == 0
