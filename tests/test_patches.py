"""Patch parameters: docs/method.md §11 properties 2, 3 and 4, the `extract_patches` fixture, validation."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from epigraf import schedules
from epigraf.cameras.rays import patch_grid, patch_sampling_grid
from epigraf.config import PatchConfig
from epigraf.patches import PatchParams, extract_patches, sample_beta, sample_patch_params

# Property 2 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("a", "b"), [(0, 0), (16, 16), (5, 9), (11, 3)])
def test_extract_is_crop(a, b, torch_generator):
    big, small = 32, 16
    # Images in the data range [-1, 1]; the grid's float32 rounding times the pixel contrast stays < 1e-5.
    images = torch.rand(2, 3, big, big, generator=torch_generator) * 2 - 1
    s = (small - 1) / (big - 1)
    params = PatchParams(torch.full((2, 2), s), torch.tensor([[a, b]] * 2) / (big - 1.0))
    crop = images[..., big - small - b : big - b, a : a + small]
    torch.testing.assert_close(extract_patches(images, params, small), crop, atol=1e-5, rtol=0)


def test_aligned_params_crop_by_top_left(torch_generator):
    images = torch.rand(3, 2, 20, 20, generator=torch_generator) * 2 - 1
    left, top = [0, 7, 12], [12, 0, 5]
    out = extract_patches(images, PatchParams.aligned(left, top, 20, 8), 8)
    for k in range(3):
        crop = images[k, :, top[k] : top[k] + 8, left[k] : left[k] + 8]
        torch.testing.assert_close(out[k], crop, atol=1e-5, rtol=0)


def test_sampling_grid_is_ray_grid_with_y_negated(torch_generator):
    r = 6
    s = torch.rand(5, 1, generator=torch_generator) * 0.8 + 0.2
    o = torch.rand(5, 2, generator=torch_generator) * (1 - s)
    params = PatchParams(s.expand(5, 2), o)
    rays = patch_grid(params.scales, params.offsets, r).reshape(5, r, r, 2)
    grid = patch_sampling_grid(params.scales, params.offsets, r)
    assert torch.equal(grid[..., 0], rays[..., 0])
    assert torch.equal(grid[..., 1], -rays[..., 1])


def test_full_patch_is_identity(torch_generator):
    images = torch.randn(2, 3, 9, 9, generator=torch_generator)
    torch.testing.assert_close(extract_patches(images, PatchParams.full(2), 9), images, atol=1e-6, rtol=0)


def test_extract_patches_fixture(original_fixtures, rel_err):
    fx = original_fixtures
    inputs = fx.inputs("extract_patches")
    params = PatchParams(inputs["patch_scales"], inputs["patch_offsets"])
    out = extract_patches(inputs["img"], params, fx.kwargs("extract_patches")["resolution"])
    assert rel_err(out, fx.outputs("extract_patches")["out"]) < fx.tol


# Property 3 ----------------------------------------------------------------------------------------

N_DRAWS = 100_000


@pytest.mark.parametrize("kimg", [0.0, 2500.0, 10000.0, 30000.0])
@pytest.mark.parametrize("resolution", [512, 256])
def test_beta_scale_mean(kimg, resolution, torch_generator):
    cfg = PatchConfig(image_resolution=resolution, resolution=64, group_size=1)
    m = cfg.min_scale
    params = sample_patch_params(N_DRAWS, cfg, kimg, generator=torch_generator)
    s = params.scales[:, 0].double()
    assert (s >= m).all() and (s <= 1).all()
    beta = 0.001 + 0.799 * min(kimg / 10000, 1.0)
    mean = m + (1 - m) / (1 + beta)
    var = (1 - m) ** 2 * beta / ((1 + beta) ** 2 * (2 + beta))
    se = math.sqrt(var / N_DRAWS)
    assert abs(s.mean().item() - mean) <= 4 * se + 1e-7


@pytest.mark.parametrize(("m", "kimg", "expected"), [(0.125, 0, 0.99913), (0.125, 1e4, 0.61111),
                                                     (0.25, 0, 0.99925), (0.25, 2e4, 0.66667)])
def test_beta_scale_closed_form_means(m, kimg, expected):
    """The schedule-driven E[s] (checked against draws above) reproduces docs/method.md §11's quoted values."""
    cfg = PatchConfig(image_resolution=round(64 / m), resolution=64)
    beta = schedules.patch_beta(kimg, cfg)
    assert cfg.min_scale + (1 - cfg.min_scale) / (1 + beta) == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize(("alpha", "beta"), [(2.0, 0.5), (0.3, 3.0)])
def test_general_beta_sampler_moments(alpha, beta, torch_generator):
    n = 20_000
    x = sample_beta(n, alpha, beta, generator=torch_generator).double()
    assert (x >= 0).all() and (x <= 1).all()
    mean = alpha / (alpha + beta)
    var = alpha * beta / ((alpha + beta) ** 2 * (alpha + beta + 1))
    assert abs(x.mean().item() - mean) <= 4 * math.sqrt(var / n)
    assert x.var().item() == pytest.approx(var, rel=0.06)


def test_beta_sampler_tiny_shapes_are_finite(torch_generator):
    x = sample_beta(1000, 1e-3, 1e-3, generator=torch_generator)
    assert torch.isfinite(x).all() and (x >= 0).all() and (x <= 1).all()
    assert (sample_beta(1000, 1.0, 1e-3, generator=torch_generator) > 0.99).float().mean() > 0.98


def test_sampling_is_reproducible():
    cfg = PatchConfig(image_resolution=256, resolution=64)
    a = sample_patch_params(16, cfg, 3000.0, generator=torch.Generator().manual_seed(7))
    b = sample_patch_params(16, cfg, 3000.0, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.scales, b.scales) and torch.equal(a.offsets, b.offsets)


# Property 4 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("distribution", ["beta", "uniform", "discrete_uniform"])
def test_support_and_square_scales(distribution, torch_generator):
    cfg = PatchConfig(image_resolution=512, resolution=64, distribution=distribution, group_size=1)
    p = sample_patch_params(20_000, cfg, 6000.0, generator=torch_generator)
    assert torch.equal(p.scales[:, 0], p.scales[:, 1])
    assert (p.offsets >= 0).all() and (p.offsets <= 1 - p.scales + 1e-6).all()
    assert (p.scales >= cfg.min_scale).all() and (p.scales <= 1).all()


def test_offsets_conditional_mean(torch_generator):
    cfg = PatchConfig(image_resolution=512, resolution=64, group_size=1)
    p = sample_patch_params(40_000, cfg, 20000.0, generator=torch_generator)
    s, o = p.scales[:, 0].double(), p.offsets.double()
    for lo, hi in [(0.125, 0.4), (0.4, 0.7), (0.7, 0.95)]:
        sel = (s >= lo) & (s < hi)
        assert sel.sum() > 1000
        # o = U·(1 − s): the normalised offset is U(0, 1) in every bin, with mean 1/2 and sd 1/sqrt(12).
        u = o[sel] / (1 - s[sel, None])
        assert ((u.mean(0) - 0.5).abs() <= 4 / math.sqrt(12 * sel.sum().item())).all()
        assert (o[sel].mean(0) - (1 - s[sel]).mean() / 2).abs().max() < 0.01


@pytest.mark.parametrize(("batch", "group_size"), [(16, 4), (12, 4), (8, 2), (3, 4), (5, 1)])
def test_params_shared_within_strided_stddev_groups(batch, group_size, torch_generator):
    cfg = PatchConfig(image_resolution=256, resolution=64, group_size=group_size)
    p = sample_patch_params(batch, cfg, 8000.0, generator=torch_generator)
    group = min(group_size, batch)
    sets = batch // group
    for n in range(batch):
        assert torch.equal(p.scales[n], p.scales[n % sets])
        assert torch.equal(p.offsets[n], p.offsets[n % sets])
    assert len(torch.unique(p.offsets[:, 0])) == sets


def test_grouping_rejects_indivisible_batch():
    with pytest.raises(ValueError, match="divisible"):
        sample_patch_params(6, PatchConfig(image_resolution=256, resolution=64, group_size=4), 0.0)


def test_uniform_variant_schedule(torch_generator):
    cfg = PatchConfig(image_resolution=512, resolution=64, distribution="uniform", group_size=1)
    assert (sample_patch_params(500, cfg, 0.0, generator=torch_generator).scales == 1).all()
    s = sample_patch_params(20_000, cfg, 5000.0, generator=torch_generator).scales[:, 0]
    m_k = 1 + (0.125 - 1) * 0.5
    assert s.min() >= m_k and s.max() <= 1
    assert s.min() < m_k + 0.01 and s.mean().item() == pytest.approx((1 + m_k) / 2, abs=0.01)


def test_discrete_uniform_variant(torch_generator):
    cfg = PatchConfig(image_resolution=512, resolution=64, distribution="discrete_uniform", group_size=1)
    assert (sample_patch_params(200, cfg, 0.0, generator=torch_generator).scales == 1).all()
    # m(k) = 0.5625 at 5000 kimg: 0.25 is not yet admitted.
    assert (sample_patch_params(200, cfg, 5000.0, generator=torch_generator).scales == 1).all()
    s = sample_patch_params(4000, cfg, 10000.0, generator=torch_generator).scales[:, 0]
    assert set(s.unique().tolist()) == {0.25, 1.0}
    assert (s == 0.25).float().mean().item() == pytest.approx(0.5, abs=0.04)


def test_max_scale_respected(torch_generator):
    for distribution in ("beta", "uniform"):
        cfg = PatchConfig(image_resolution=256, resolution=64, distribution=distribution, max_scale=0.6,
                          group_size=1)
        s = sample_patch_params(5000, cfg, 20000.0, generator=torch_generator).scales
        assert (s >= 0.25).all() and (s <= 0.6).all()


def test_disabled_patches_give_full_image():
    cfg = dataclasses.replace(PatchConfig(image_resolution=256, resolution=64), enabled=False)
    p = sample_patch_params(4, cfg, 100.0)
    assert (p.scales == 1).all() and (p.offsets == 0).all()


# Validation ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scales", "offsets", "match"),
    [
        (torch.ones(2, 3), torch.zeros(2, 3), r"\[B, 2\]"),
        (torch.ones(2, 2), torch.zeros(3, 2), "shape"),
        (torch.zeros(2, 2), torch.zeros(2, 2), "scales"),
        (torch.full((2, 2), 1.5), torch.zeros(2, 2), "scales"),
        (torch.full((2, 2), 0.5), torch.full((2, 2), -0.1), "offsets"),
        (torch.full((2, 2), 0.5), torch.full((2, 2), 0.6), "inside the image"),
        (torch.full((2, 2), float("nan")), torch.zeros(2, 2), "NaN"),
    ],
)
def test_patch_params_validation(scales, offsets, match):
    with pytest.raises(ValueError, match=match):
        PatchParams(scales, offsets)


def test_patch_params_helpers():
    p = PatchParams.full(3)
    assert len(p) == 3 and p.batch_size == 3
    assert p.to("cpu").scales.device.type == "cpu"
    PatchParams(torch.full((1, 2), 0.5), torch.full((1, 2), 0.5 + 5e-7))  # rounding slack is accepted
    with pytest.raises(ValueError, match="left"):
        PatchParams.aligned([20], [0], 20, 8)
