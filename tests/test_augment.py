"""ADA augmentation pipe (epigraf.train.augment): exactness, geometry and colour semantics, gradients, adaptive p."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from epigraf.train.augment import AdaptiveP, AugmentPipe, adjust_p
from epigraf.train.resample import blit, warp_affine

ALL_OFF = dict.fromkeys(
    ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac")
    + ("brightness", "contrast", "lumaflip", "hue", "saturation"),
    0.0,
)


def make_pipe(p: float = 1.0, **multipliers: float) -> AugmentPipe:
    """A pipe with only the named transforms on (or the defaults when none are named)."""
    pipe = AugmentPipe(**{**ALL_OFF, **multipliers}) if multipliers else AugmentPipe()
    pipe.p.fill_(p)
    return pipe


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def smooth_images(batch: int = 1, size: int = 32) -> torch.Tensor:
    """Band-limited test images (at most ~0.1 cycles/pixel). [batch, 3, size, size]."""
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    phase = torch.arange(batch, dtype=torch.float32)[:, None, None]
    channels = [torch.sin(2 * math.pi * (1.5 * x + y) + phase), torch.cos(2 * math.pi * (2 * x - y) + phase)]
    channels.append(torch.sin(2 * math.pi * 3 * y + phase) * x)
    return torch.stack(channels, dim=1)


def random_images(batch: int, channels: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, channels, size, size, generator=seeded(seed)) * 2 - 1


def test_p_zero_returns_the_input_itself():
    x = random_images(4)
    pipe = AugmentPipe()
    assert pipe(x, seeded()) is x
    pipe.p.fill_(0.7)
    pipe.p.zero_()
    assert pipe(x) is x
    assert "p" in pipe.state_dict()


def test_untouched_samples_stay_bit_identical_and_draws_are_per_sample():
    x = random_images(1).expand(32, -1, -1, -1).contiguous()
    out = make_pipe(0.1)(x, seeded(3))
    same = (out == x).flatten(1).all(dim=1)
    assert same.any() and not same.all()
    # Identical inputs, independent draws: the augmented copies differ from each other.
    changed = out[~same]
    assert len(changed) >= 2 and not torch.equal(changed[0], changed[1])


def test_seeded_generator_is_deterministic():
    x = random_images(8)
    pipe = make_pipe(0.8)
    assert torch.equal(pipe(x, seeded(5)), pipe(x, seeded(5)))
    assert not torch.equal(pipe(x, seeded(5)), pipe(x, seeded(6)))


def test_gradients_flow_and_r1_through_the_pipe():
    x = random_images(4, size=16).requires_grad_(True)
    out = make_pipe(1.0)(x, seeded(1))
    (grad,) = torch.autograd.grad((out * torch.randn_like(out)).sum(), x)
    assert grad.abs().sum() > 0 and torch.isfinite(grad).all()

    _check_r1_through_the_pipe(torch.device("cpu"))


def _check_r1_through_the_pipe(device: torch.device) -> None:
    """R1 penalty: ‖∇_x D(aug(x))‖² must be differentiable w.r.t. D's parameters (double backward)."""
    x = random_images(4, size=16).to(device).requires_grad_(True)
    disc = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Softplus(), nn.Flatten(), nn.Linear(4 * 14 * 14, 1)).to(device)
    logits = disc(make_pipe(1.0, scale=1.0, rotate=1.0, xfrac=1.0).to(device)(x, seeded(2)))
    (grad_x,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
    grad_x.square().sum().backward()
    # Biases do not enter ∇_x D, weights do.
    assert disc[0].weight.grad.abs().sum() > 0 and disc[3].weight.grad.abs().sum() > 0


def test_warp_is_twice_differentiable_in_the_image():
    x = random_images(2, size=6).double().requires_grad_(True)
    angle = torch.tensor([0.3, -1.1], dtype=torch.float64)
    matrix = torch.zeros(2, 3, 3, dtype=torch.float64)
    matrix[:, 0, 0], matrix[:, 0, 1], matrix[:, 0, 2] = 1.2 * angle.cos(), -angle.sin(), 0.4
    matrix[:, 1, 0], matrix[:, 1, 1], matrix[:, 1, 2] = angle.sin(), 0.9 * angle.cos(), -0.7
    matrix[:, 2, 2] = 1

    def warp(t):
        return warp_affine(t, matrix)

    assert torch.autograd.gradcheck(warp, (x,))
    assert torch.autograd.gradgradcheck(warp, (x,))


def test_gradcheck_small_pipe():
    x = random_images(2, size=6).double().requires_grad_(True)
    pipe = make_pipe(1.0)
    assert torch.autograd.gradcheck(lambda t: pipe(t, seeded(4)), (x,), eps=1e-6, atol=1e-5, fast_mode=True)


def test_integer_translation_gives_mirror_padded_shifted_copies():
    x = random_images(16, size=16)
    out = make_pipe(1.0, xint=1.0)(x, seeded(7))
    pad = 2  # 0.125 · 16
    padded = torch.from_numpy(np.pad(x.numpy(), ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="reflect"))
    shifts = []
    for i in range(len(x)):
        matches = [
            (dy, dx)
            for dy in range(-pad, pad + 1)
            for dx in range(-pad, pad + 1)
            if torch.equal(out[i], padded[i, :, pad - dy : pad - dy + 16, pad - dx : pad - dx + 16])
        ]
        assert len(matches) == 1, f"sample {i} is not a mirror-padded integer shift"
        shifts.append(matches[0])
    assert len(set(shifts)) > 3


def test_rotate90_outputs_are_rotations_of_their_input():
    x = random_images(32)
    out = make_pipe(1.0, rotate90=1.0)(x, seeded(8))
    found = set()
    for i in range(len(x)):
        ks = [k for k in range(4) if torch.equal(out[i], torch.rot90(x[i], k, dims=(-2, -1)))]
        assert len(ks) == 1
        found.add(ks[0])
    assert found == {0, 1, 2, 3}


@pytest.mark.parametrize("xflip", [0.0, 1.0])
def test_no_flips_unless_asked(xflip):
    # With p = 1 and every blit on, only x-flip can produce a mirrored (improper) dihedral image.
    x = random_images(64)
    out = make_pipe(1.0, xflip=xflip, rotate90=1.0)(x, seeded(9))
    mirrored = [
        any(torch.equal(out[i], torch.rot90(x[i].flip(-1), k, dims=(-2, -1))) for k in range(4)) for i in range(len(x))
    ]
    if xflip == 0:
        assert not any(mirrored)
    else:
        assert 16 < sum(mirrored) < 48  # flips fire with probability p/2


def test_default_pipe_never_flips():
    pipe = AugmentPipe()
    assert pipe.xflip == 0
    x = random_images(64)
    pipe_blit = make_pipe(1.0, xflip=pipe.xflip, rotate90=pipe.rotate90)
    out = pipe_blit(x, seeded(10))
    assert not any(
        torch.equal(out[i], torch.rot90(x[i].flip(-1), k, dims=(-2, -1))) for i in range(len(x)) for k in range(4)
    )


def test_warp_identity_reproduces_images():
    """Tolerance: the identity warp low-passes with the half-band filter; smooth images come back to 1e-3 more
    than 12 pixels (the filters' reach) from the border, 5e-2 at the border (mirror kink), constants exactly
    up to float rounding."""
    x = smooth_images(2, size=48)
    eye = torch.eye(3).repeat(2, 1, 1)
    err = (warp_affine(x, eye) - x).abs()
    assert err[..., 12:-12, 12:-12].max() < 1e-3
    assert err.max() < 5e-2
    constant = torch.full((1, 3, 16, 16), 0.3)
    assert (warp_affine(constant, eye[:1]) - constant).abs().max() < 1e-5


def test_warp_agrees_with_exact_shifts_and_rotations():
    # Same coordinate conventions: away from the border the resampled and the exact results agree.
    x = smooth_images(1, size=48)
    shift = torch.eye(3)[None].clone()
    shift[0, 0, 2], shift[0, 1, 2] = 3.0, -2.0
    assert (warp_affine(x, shift) - blit(x, shift))[..., 16:-16, 16:-16].abs().max() < 1e-3
    quarter = torch.tensor([[[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])
    assert (warp_affine(x, quarter) - blit(x, quarter))[..., 12:-12, 12:-12].abs().max() < 1e-3
    assert any(torch.equal(blit(x, quarter), torch.rot90(x, k, dims=(-2, -1))) for k in (1, 3))


def test_general_geometric_changes_images_smoothly():
    x = smooth_images(8)
    out = make_pipe(1.0, scale=1.0, rotate=1.0, aniso=1.0, xfrac=1.0)(x, seeded(11))
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert ((out - x).abs().flatten(1).amax(1) > 1e-2).all()
    assert out.abs().max() < 1.2  # antialiased resampling of a [−1, 1] image barely overshoots


def test_brightness_shifts_every_value_by_one_offset():
    x = random_images(16)
    delta = make_pipe(1.0, brightness=1.0)(x, seeded(12)) - x
    per_image = delta.flatten(1)
    assert torch.allclose(per_image, per_image[:, :1].expand_as(per_image), atol=1e-6)
    assert per_image[:, 0].abs().max() > 0.05


def test_contrast_scales_about_mid_grey():
    x = random_images(16)
    x = x - x.mean(dim=(1, 2, 3), keepdim=True)  # zero mean: scaling about 0 is scaling about the mean
    out = make_pipe(1.0, contrast=1.0)(x, seeded(13))
    ratio = (out / x).flatten(1)
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), atol=1e-4)
    assert (ratio[:, 0] > 0).all() and (ratio[:, 0] - 1).abs().max() > 0.1
    assert out.mean(dim=(1, 2, 3)).abs().max() < 1e-5


@pytest.mark.parametrize("transform", ["hue", "saturation"])
def test_hue_and_saturation_keep_grey_and_luma(transform):
    grey = random_images(16, channels=1).expand(-1, 3, -1, -1)
    pipe = make_pipe(1.0, **{transform: 1.0})
    assert torch.allclose(pipe(grey, seeded(14)), grey, atol=1e-5)
    x = random_images(16)
    out = pipe(x, seeded(15))
    assert torch.allclose(out.mean(dim=1), x.mean(dim=1), atol=1e-5)  # the grey component is kept
    assert (out - x).abs().max() > 0.1


def test_luma_flip_negates_grey_component_only():
    x = random_images(32)
    out = make_pipe(1.0, lumaflip=1.0)(x, seeded(16))
    flipped = ~(out == x).flatten(1).all(dim=1)
    assert 4 < flipped.sum() < 28
    assert torch.allclose(out[flipped].mean(dim=1), -x[flipped].mean(dim=1), atol=1e-5)
    chroma = x[flipped] - x[flipped].mean(dim=1, keepdim=True)
    assert torch.allclose(out[flipped] - out[flipped].mean(dim=1, keepdim=True), chroma, atol=1e-5)


def test_channel_counts():
    grey = random_images(4, channels=1)
    assert make_pipe(1.0)(grey, seeded()).shape == grey.shape
    with pytest.raises(ValueError, match="1, 3 or 4 \\(RGB and alpha\\) channels"):
        make_pipe(1.0)(random_images(4, channels=2), seeded())


def test_rgb_and_alpha_move_together_and_only_the_colours_change_colour():
    """A fourth (alpha) channel goes through the geometric transforms as the colours do, and through the colour
    transforms unchanged: the same pipe and draws give RGB + alpha what they give RGB and a grey copy of alpha."""
    rgba = random_images(4, channels=4)
    geometric = make_pipe(1.0, xint=1.0, scale=1.0, rotate=1.0)
    moved = geometric(rgba, seeded(3))
    torch.testing.assert_close(moved[:, :3], geometric(rgba[:, :3], seeded(3)))
    torch.testing.assert_close(moved[:, 3:], geometric(rgba[:, 3:], seeded(3)))
    assert not torch.allclose(moved, rgba)
    colour = make_pipe(1.0, brightness=1.0, contrast=1.0, hue=1.0, saturation=1.0)
    recoloured = colour(rgba, seeded(4))
    torch.testing.assert_close(recoloured[:, :3], colour(rgba[:, :3], seeded(4)))
    assert torch.equal(recoloured[:, 3:], rgba[:, 3:])


def test_adjust_p_step_size_and_clamp():
    step = 64 * 4 / (500 * 1000)
    kw = dict(target=0.6, batch_size=64, interval=4, speed_kimg=500.0)
    assert adjust_p(0.1, 0.9, **kw) == pytest.approx(0.1 + step)
    assert adjust_p(0.1, 0.2, **kw) == pytest.approx(0.1 - step)
    assert adjust_p(0.1, 0.6, **kw) == 0.1
    assert adjust_p(step / 2, -1.0, **kw) == 0.0


def test_adaptive_p_moves_with_overfitting_and_stays_non_negative():
    ada = AdaptiveP(target=0.6, interval=4, speed_kimg=500.0, batch_size=8)
    step = 8 * 4 / (500 * 1000)
    p = 0.0
    for i in range(8):
        ada.observe(torch.tensor([1.0, 2.0, -1.0, 3.0, 1.0, 1.0, 1.0, 1.0]))  # mean sign 0.75 > 0.6
        p = ada.step(p)
        assert p == pytest.approx(step * ((i + 1) // 4))
    assert ada.last_rt == pytest.approx(0.75)
    for _ in range(12):
        ada.observe(-torch.ones(8))
        p = ada.step(p)
        assert p >= 0
    assert p == 0.0


def test_adaptive_p_state_dict_round_trip():
    ada = AdaptiveP(interval=4, batch_size=4)
    p = 0.3
    for _ in range(6):  # stop mid-interval, with observations pending
        ada.observe(torch.tensor([1.0, 1.0, 1.0, -1.0]))
        p = ada.step(p)
    restored = AdaptiveP(interval=4, batch_size=4)
    restored.load_state_dict(ada.state_dict())
    assert restored.state_dict() == ada.state_dict()
    p_saved = p_restored = p
    for _ in range(2):
        logits = torch.ones(4)  # with the pending ones, r_t = 0.75 at the interval's end
        ada.observe(logits)
        restored.observe(logits)
        p, p_restored = ada.step(p), restored.step(p_restored)
    assert p == p_restored and p > p_saved


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda_with_either_generator():
    x = random_images(8).cuda().requires_grad_(True)
    pipe = make_pipe(1.0).cuda()
    out_cpu_draws = pipe(x, seeded(17))
    out_cuda_draws = pipe(x, torch.Generator(device="cuda").manual_seed(17))
    assert out_cpu_draws.device.type == out_cuda_draws.device.type == "cuda"
    cpu_reference = make_pipe(1.0)(x.detach().cpu(), seeded(17))
    assert torch.allclose(out_cpu_draws.detach().cpu(), cpu_reference, atol=1e-4)
    out_cuda_draws.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_r1_through_the_pipe_on_cuda():
    _check_r1_through_the_pipe(torch.device("cuda"))
