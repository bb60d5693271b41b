"""The patch-wise GAN objective term by term (docs/method.md §5): R1, the D-input blur, independent fake/real patches,
per-phase draws, GPC spoofing, the non-saturating signs, the EMA and the lazy-R1 Adam correction, as the trainer
uses them.

Generator and discriminator are replaced by small recording stand-ins where a term's value must be known
in closed form: a linear D(x) = Σ a·x has the input gradient a, so R1 through a linear blur and augment is
a matrix expression computed here independently of the implementation.
"""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch
from torch import Tensor, nn

from epigraf.config import ModelConfig
from epigraf.nn.generator import Generator
from epigraf.patches import PatchParams, extract_patches, sample_patch_params
from epigraf.schedules import gpc_spoof_prob
from epigraf.train.draws import (
    FakeDraws,
    IterationDraws,
    RealBatch,
    draw_fakes,
    draw_iteration,
    spoof_camera_angles,
)
from epigraf.train.loop import train, update_ema
from epigraf.train.loss import PatchGANLoss
from epigraf.train.run_snapshots import latest_snapshot, load_state
from test_checkpoint import tiny_model_config
from test_train import make_dataset, options

R, r = 32, 16


def dense_blur_matrix(sigma: float, n: int) -> Tensor:
    """docs/method.md §5.3 as an n×n matrix: taps ∝ 2^(−(t/σ)²) on integers |t| ≤ ⌊3σ⌋, normalised, zero outside."""
    radius = math.floor(3 * sigma)
    if radius == 0:
        return torch.eye(n)
    taps = {t: 2.0 ** (-((t / sigma) ** 2)) for t in range(-radius, radius + 1)}
    total = sum(taps.values())
    return torch.tensor([[taps.get(j - i, 0.0) / total for j in range(n)] for i in range(n)])


def dense_blur(images: Tensor, sigma: float) -> Tensor:
    """Separable blur of [B, C, n, n] along rows and columns: B·x·Bᵀ per channel."""
    m = dense_blur_matrix(sigma, images.shape[-1])
    return m @ images @ m.T


class LinearD(nn.Module):
    """D(x) = Σ a·x per sample; records every call's input images and patch parameters."""

    def __init__(self, a: Tensor) -> None:
        super().__init__()
        self.cfg = SimpleNamespace(c_dim=0, camera_cond=False, img_channels=a.shape[0])
        self.a = nn.Parameter(a)
        self.calls: list[tuple[Tensor, PatchParams]] = []

    def forward(self, images: Tensor, c: Tensor | None, pp: PatchParams, camera_angles: Tensor | None = None
                ) -> Tensor:
        self.calls.append((images.detach().clone(), pp))
        return (images * self.a).sum(dim=(1, 2, 3))


class PresetD(nn.Module):
    """Returns the given logits, one tensor per call, in order (fake first in the D phase)."""

    def __init__(self, *logits: Tensor) -> None:
        super().__init__()
        self.cfg = SimpleNamespace(c_dim=0, camera_cond=False, img_channels=3)
        self.queue = list(logits)

    def forward(self, images: Tensor, *args, **kwargs) -> Tensor:
        return self.queue.pop(0)


class RecordingG(nn.Module):
    """Renders a fixed random patch per call and records its keyword arguments."""

    def __init__(self, camera_cond: bool = False) -> None:
        super().__init__()
        self.cfg = dataclasses.replace(tiny_model_config().generator, camera_cond=camera_cond)
        self.c_dim = 0
        self.calls: list[dict] = []
        self.images: list[Tensor] = []

    def forward(self, z: Tensor, c: Tensor | None, camera_angles: Tensor, **kwargs) -> SimpleNamespace:
        self.calls.append({"camera_angles": camera_angles, **kwargs})
        self.images.append(torch.rand(z.shape[0], 3, r, r) * 2 - 1)
        return SimpleNamespace(image=self.images[-1], distortion=None)


class MaskAugment(nn.Module):
    """A linear augmentation that does not commute with the blur: multiplies by a fixed mask."""

    def __init__(self, mask: Tensor) -> None:
        super().__init__()
        self.mask = mask

    def forward(self, images: Tensor) -> Tensor:
        return images * self.mask


def phase_inputs(batch: int, seed: int = 0, kimg: float = 0.0) -> IterationDraws:
    """Draws of an iteration with an R1 phase: a real batch, and per phase its own z, cameras and patches."""
    g = torch.Generator().manual_seed(seed)
    angles = torch.stack([torch.rand(batch, generator=g) - 0.5, torch.full((batch,), 1.5), torch.zeros(batch)], 1)
    real = RealBatch(torch.rand(batch, 3, R, R, generator=g) * 2 - 1, torch.zeros(batch, 0), angles)

    def patches() -> PatchParams:
        return sample_patch_params(batch, tiny_model_config().patch, kimg, generator=g)

    def fakes() -> FakeDraws:
        cameras = angles[torch.randperm(batch, generator=g)]
        return FakeDraws(torch.randn(batch, 16, generator=g), torch.zeros(batch, 0), cameras, cameras, patches())

    return IterationDraws(real, fakes(), fakes(), patches(), patches())


def make_loss(G: nn.Module, D: nn.Module, augment: nn.Module | None = None, gamma: float = 0.3,
              cfg: ModelConfig | None = None, **kwargs) -> PatchGANLoss:
    return PatchGANLoss(cfg or tiny_model_config(), G, D, augment, gamma, blur_init_sigma=10.0, blur_fade_kimg=200.0,
                        **kwargs)


# ----------------------------------------------------------------------------- R1


@pytest.mark.parametrize("kimg", [150.0, 400.0])  # blur σ 2.5, then none
def test_r1_is_half_gamma_squared_input_gradient_through_blur_then_augment_times_interval(kimg):
    torch.manual_seed(0)
    a, mask = torch.randn(3, r, r), torch.rand(3, r, r) + 0.5
    gamma, interval = 0.3, 16
    loss = make_loss(RecordingG(), LinearD(a), MaskAugment(mask), gamma=gamma)
    x = phase_inputs(4)
    result = loss.r1_loss(x.real, x.dreg_real_patch, kimg, interval)
    value, stats = result.loss, result.stats
    # D(aug(blur(x))) = Σ a·mask·(B x Bᵀ), so ∇x = Bᵀ (a·mask) B, the same for every sample.
    blur = dense_blur_matrix(10.0 * max(0.0, 1 - kimg / 200), r)
    grad = blur.T @ (a * mask) @ blur
    penalty = grad.square().sum()
    assert stats["loss/r1_penalty"] == pytest.approx(penalty.item(), rel=1e-5)
    assert value.item() == pytest.approx(gamma / 2 * penalty.item() * interval, rel=1e-5)


def test_r1_penalty_is_differentiable_with_respect_to_d():
    # The penalty must train D: its gradient w.r.t. a (with no blur or augment) is γ·interval·a.
    a = torch.randn(3, r, r)
    D = LinearD(a.clone())
    loss = make_loss(RecordingG(), D, gamma=0.3)
    x = phase_inputs(4)
    loss.r1_loss(x.real, x.dreg_real_patch, 400.0, 4).loss.backward()
    torch.testing.assert_close(D.a.grad, 0.3 * 4 * a)


# ----------------------------------------------------------------------------- blur and patch draws


@pytest.mark.parametrize("kimg, sigma", [(0.0, 10.0), (100.0, 5.0), (190.0, 0.5), (200.0, 0.0), (1000.0, 0.0)])
def test_d_phase_blurs_fake_and_real_patches_fading_with_kimg(kimg, sigma):
    torch.manual_seed(1)
    G, D = RecordingG(), LinearD(torch.randn(3, r, r))
    x = phase_inputs(4)
    make_loss(G, D).discriminator_loss(x.dmain, x.real, x.dmain_real_patch, kimg)
    (fake_seen, pp_fake), (real_seen, pp_real) = D.calls
    real_patch = extract_patches(x.real.images, pp_real, r)
    torch.testing.assert_close(fake_seen, dense_blur(G.images[0], sigma), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(real_seen, dense_blur(real_patch, sigma), atol=1e-5, rtol=1e-5)
    if sigma >= 1 / 3:  # the blur must show, or the comparisons above prove nothing
        assert (fake_seen - G.images[0]).abs().max() > 0.05


def test_each_phase_uses_its_own_draws_and_d_sees_the_fakes_own_patches():
    G, D = RecordingG(), LinearD(torch.randn(3, r, r))
    loss, x = make_loss(G, D), phase_inputs(8)
    kimg = 20000.0
    loss.generator_loss(x.gall, kimg)
    loss.discriminator_loss(x.dmain, x.real, x.dmain_real_patch, kimg)
    loss.r1_loss(x.real, x.dreg_real_patch, kimg, 16)
    (_, pp_g), (_, pp_fake), (real_seen, pp_real), (_, pp_r1) = D.calls
    def same(a: list, b: list) -> bool:
        return len(a) == len(b) and all(u is v for u, v in zip(a, b, strict=True))

    assert same([call["patch_params"] for call in G.calls], [x.gall.patch, x.dmain.patch])
    assert same([pp_g, pp_fake, pp_real, pp_r1], [x.gall.patch, x.dmain.patch, x.dmain_real_patch, x.dreg_real_patch])
    assert same([call["camera_angles"] for call in G.calls], [x.gall.camera_angles, x.dmain.camera_angles])
    torch.testing.assert_close(real_seen, extract_patches(x.real.images, pp_real, r))


@pytest.mark.parametrize("with_r1", [False, True])
def test_draw_iteration_gives_every_phase_fresh_z_cameras_and_patches(with_r1):
    cfg = tiny_model_config()
    real = phase_inputs(8).real
    cameras = torch.randn(64, 3)

    def conditioning(n: int) -> tuple[Tensor, Tensor]:
        return torch.zeros(n, 0), cameras[torch.randint(64, (n,))]

    torch.manual_seed(2)
    x = draw_iteration(real, cfg, 20000.0, conditioning, spoof_p=0.5, with_r1=with_r1)  # β = 0.8: scales spread
    assert x.real is real and (x.dreg_real_patch is not None) == with_r1
    assert not torch.equal(x.gall.z, x.dmain.z) and not torch.equal(x.gall.camera_angles, x.dmain.camera_angles)
    patches = [x.gall.patch, x.dmain.patch, x.dmain_real_patch] + ([x.dreg_real_patch] if with_r1 else [])
    for i, a in enumerate(patches):
        for b in patches[i + 1:]:
            assert not torch.equal(a.scales, b.scales) and not torch.equal(a.offsets, b.offsets)
    assert x.dmain_real_patch.scales.min() < 0.9  # the draws really vary
    # Without GPC the conditioning camera is the rendering camera.
    assert x.gall.camera_angles_cond is x.gall.camera_angles


# ----------------------------------------------------------------------------- GPC spoofing


def test_spoofing_shifts_a_random_subset_cyclically():
    angles = torch.randn(2000, 3)
    torch.testing.assert_close(spoof_camera_angles(angles, 0.0), angles)
    everyone = spoof_camera_angles(angles, 1.0)
    torch.testing.assert_close(everyone, angles.roll(1, dims=0))
    torch.manual_seed(3)
    half = spoof_camera_angles(angles, 0.5)
    changed = (half != angles).any(dim=1).float().mean().item()
    assert abs(changed - 0.5) < 4 * math.sqrt(0.25 / 2000)
    assert torch.equal(half.sort(dim=0).values, angles.sort(dim=0).values)  # a permutation of the same poses


@pytest.mark.parametrize("kimg, p", [(0.0, 1.0), (500.0, 0.75), (1000.0, 0.5), (5000.0, 0.5)])
def test_generator_is_conditioned_on_spoofed_poses_but_renders_the_true_ones(kimg, p):
    cfg = dataclasses.replace(tiny_model_config(), generator=RecordingG(camera_cond=True).cfg)
    cameras = torch.randn(4000, 3)
    torch.manual_seed(4)
    fakes = draw_fakes(4000, cfg, kimg, lambda n: (torch.zeros(n, 0), cameras), gpc_spoof_prob(kimg, 0.5, 1000.0),
                       torch.device("cpu"))
    changed = (fakes.camera_angles_cond != cameras).any(dim=1).float().mean().item()
    assert abs(changed - p) < 4 * math.sqrt(0.25 / 4000) + 1e-3
    G = RecordingG(camera_cond=True)
    make_loss(G, LinearD(torch.zeros(3, r, r)), cfg=cfg).generate(fakes, kimg)
    assert torch.equal(G.calls[0]["camera_angles"], cameras)
    assert torch.equal(G.calls[0]["camera_angles_cond"], fakes.camera_angles_cond)


def test_without_pose_conditioning_nothing_is_spoofed():
    G = RecordingG(camera_cond=False)
    make_loss(G, LinearD(torch.zeros(3, r, r))).generate(phase_inputs(4).gall, 0.0)
    assert G.calls[0]["camera_angles_cond"] is None


# ----------------------------------------------------------------------------- adversarial signs


def test_non_saturating_losses_and_their_signs():
    fake = torch.tensor([-2.0, 0.5, 3.0, 1.0], requires_grad=True)
    real = torch.tensor([1.0, -1.0, 0.3, 2.0], requires_grad=True)

    def softplus(t: Tensor) -> Tensor:
        return torch.log1p(torch.exp(t))

    x = phase_inputs(4)
    g = make_loss(RecordingG(), PresetD(fake)).generator_loss(x.gall, 0.0)
    g_loss, g_stats = g.loss, g.stats
    torch.testing.assert_close(g_loss, softplus(-fake).mean())
    (d_fake,) = torch.autograd.grad(g_loss, fake)
    assert (d_fake < 0).all()  # G gains by raising its fakes' logits
    assert g_stats["scores/fake_G"] == pytest.approx(fake.mean().item())

    d = make_loss(RecordingG(), PresetD(fake, real)).discriminator_loss(x.dmain, x.real, x.dmain_real_patch, 0.0)
    d_loss, real_logits, d_stats = d.loss, d.real_logits, d.stats
    torch.testing.assert_close(d_loss, softplus(fake).mean() + softplus(-real).mean())
    d_fake, d_real = torch.autograd.grad(d_loss, (fake, real))
    assert (d_fake > 0).all() and (d_real < 0).all()  # D lowers fakes' logits and raises reals'
    assert torch.equal(real_logits, real.detach())
    assert (d_stats["scores/fake"], d_stats["scores/real"]) == pytest.approx((fake.mean().item(), real.mean().item()))


# ----------------------------------------------------------------------------- EMA and optimisers


def test_ema_update_moves_each_weight_towards_g_by_one_minus_beta_and_copies_buffers():
    G, G_ema = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    with torch.no_grad():
        G.weight.copy_(torch.tensor([1.0, 2.0, 3.0]))
        G_ema.weight.copy_(torch.tensor([5.0, 6.0, 7.0]))
        G.running_mean.copy_(torch.tensor([0.5, 0.5, 0.5]))
    update_ema(G_ema, G, 0.25)
    torch.testing.assert_close(G_ema.weight.detach(), 0.25 * torch.tensor([5.0, 6.0, 7.0]) + 0.75 * G.weight.detach())
    assert torch.equal(G_ema.running_mean, G.running_mean)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("loss") / "data").parent


def initial_generator() -> Generator:
    """The trainer's G before its first step: the same seed, the same construction."""
    torch.manual_seed(0)
    return Generator(tiny_model_config().generator)


@pytest.mark.parametrize("ema_kimg, rampup, expected_nimg", [
    (-1.0, None, 4 * 0.3125 * 1000),  # the default half-life: batch · 0.3125 kimg
    (1000.0, None, 1000 * 1000),
    (1000.0, 0.05, 1e-8),  # ramp-up: min(ema_kimg, 0.05 · images seen before the step), 0 at the first step
])
def test_trainer_ema_uses_the_half_life_and_its_ramp_up(dataset_dir, ema_kimg, rampup, expected_nimg):
    # A large G step (every weight moves by ≈ g_lr) makes a 4 % change of the half-life visible in G_ema.
    opts = options(dataset_dir, kimg=0.004, augment="none", metrics_ticks=0, ema_kimg=ema_kimg, ema_rampup=rampup,
                   g_lr=0.5)
    result = train(opts, tiny_model_config())
    beta = 0.5 ** (4 / expected_nimg)
    start = dict(initial_generator().named_parameters())
    for name, p in result.G_ema.named_parameters():
        g = dict(result.G.named_parameters())[name]
        expected = g.detach() + (start[name].detach() - g.detach()) * beta
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-6)
    moved = sum((dict(result.G.named_parameters())[k] - v).abs().sum().item() for k, v in start.items())
    assert moved > 0  # G took a step, so β is visible in G_ema


def test_trainer_runs_lazy_r1_every_interval_with_the_corrected_adam(dataset_dir, monkeypatch):
    calls = []
    r1_loss = PatchGANLoss.r1_loss

    def recording_r1_loss(self, real, real_patch, kimg, interval):
        calls.append((kimg, interval))
        return r1_loss(self, real, real_patch, kimg, interval)

    monkeypatch.setattr(PatchGANLoss, "r1_loss", recording_r1_loss)
    opts = options(dataset_dir, kimg=0.012, tick_kimg=0.012, augment="none", metrics_ticks=0, r1_interval=2,
                   d_lr=0.003, g_lr=0.001)
    result = train(opts, tiny_model_config())
    assert calls == [(0.0, 2), (0.008, 2)]  # steps 0 and 2 of three, batch 4
    state = load_state(latest_snapshot(result.run_dir)[1])
    (d_group,), (g_group,) = state["D_opt"]["param_groups"], state["G_opt"]["param_groups"]
    assert d_group["lr"] == pytest.approx(0.003 * 2 / 3)
    assert d_group["betas"] == pytest.approx((0.0, 0.99 ** (2 / 3)))
    assert (g_group["lr"], tuple(g_group["betas"])) == (0.001, (0.0, 0.99))
    assert d_group["eps"] == g_group["eps"] == 1e-8



# ----------------------------------------------------------------------------- distortion


@pytest.mark.parametrize("weight", [0.0, 2.5])
def test_generator_loss_adds_the_weighted_distortion_of_the_fakes(weight):
    """With D ≡ 0 the non-saturating term is log 2; the rest is weight × the mean distortion of the same render."""
    torch.manual_seed(0)
    cfg = tiny_model_config()
    G = Generator(cfg.generator)
    fake = phase_inputs(4).gall
    loss = make_loss(G, LinearD(torch.zeros(3, r, r)), cfg=cfg, deterministic_render=True, distortion_weight=weight)
    result = loss.generator_loss(fake, 50.0)
    with torch.no_grad():
        out = G(fake.z, None, fake.camera_angles, patch_params=fake.patch, deterministic=True, resolution=r,
                with_distortion=True)
    expected = math.log(2) + weight * out.distortion.mean().item()
    assert result.loss.item() == pytest.approx(expected, rel=1e-5)
    assert ("loss/distortion" in result.stats) == (weight > 0)
    if weight > 0:
        assert result.stats["loss/distortion"] == pytest.approx(out.distortion.mean().item(), rel=1e-5)
        result.loss.backward()
        assert G.field.mlp.model[-1].weight.grad.abs().sum() > 0


def test_a_d_that_takes_alpha_sees_gs_opacity_and_the_reals_coverage():
    """With ``img_channels`` 4, D's fourth channel is G's opacity (G phase, D phase) and the real patches' coverage,
    both mapped to [−1, 1] like the colours, resampled at each one's own patch; the colours are unchanged."""
    torch.manual_seed(0)
    cfg = tiny_model_config()
    render = dataclasses.replace(cfg.generator.render, open_far_end=True, white_back=True)  # the builtin's
    cfg = dataclasses.replace(cfg, generator=dataclasses.replace(cfg.generator, render=render))
    G = Generator(cfg.generator)
    draws = phase_inputs(4, kimg=500.0)  # past the blur: D sees the patches as they are
    coverage = (torch.rand(4, 1, R, R) > 0.5).float() * 2 - 1
    real = dataclasses.replace(draws.real, images=torch.cat([draws.real.images, coverage], dim=1))
    D = LinearD(torch.zeros(4, r, r))
    loss = make_loss(G, D, cfg=cfg, deterministic_render=True)
    loss.generator_loss(draws.gall, 500.0)
    loss.discriminator_loss(draws.dmain, real, draws.dmain_real_patch, 500.0)
    for (seen, _), fake in zip(D.calls[:2], (draws.gall, draws.dmain), strict=True):
        with torch.no_grad():
            out = G(fake.z, None, fake.camera_angles, patch_params=fake.patch, deterministic=True, resolution=r)
        assert seen.shape == (4, 4, r, r)
        torch.testing.assert_close(seen[:, :3], out.image)
        torch.testing.assert_close(seen[:, 3:], out.opacity * 2 - 1)
    assert out.opacity.max() - out.opacity.min() > 0.1  # the fourth channel varies with what the ray meets
    torch.testing.assert_close(D.calls[2][0], extract_patches(real.images, draws.dmain_real_patch, r))


class CameraRecordingD(PresetD):
    """A camera-conditioned stand-in: returns the given logits in order and records each call's images and
    camera angles."""

    def __init__(self, *logits: Tensor) -> None:
        super().__init__(*logits)
        self.cfg = SimpleNamespace(c_dim=0, camera_cond=True, img_channels=3)
        self.calls: list[tuple[Tensor, Tensor]] = []

    def forward(self, images: Tensor, c, pp, camera_angles: Tensor | None = None) -> Tensor:
        self.calls.append((images.detach().clone(), camera_angles.clone()))
        return self.queue.pop(0)


@pytest.mark.parametrize("weight", [0.0, 0.5])
def test_a_matching_aware_d_sees_the_reals_at_the_next_images_camera_as_fakes(weight):
    """With ``wrong_camera_weight`` w, the D phase adds w · softplus(D(real patches, c, the next real image's camera))
    to the usual loss: the same real patches, every camera moved by one place in the batch, pushed down."""
    fake = torch.tensor([-2.0, 0.5, 3.0, 1.0], requires_grad=True)
    real = torch.tensor([1.0, -1.0, 0.3, 2.0], requires_grad=True)
    wrong = torch.tensor([0.7, 1.5, -0.2, 0.1], requires_grad=True)
    x = phase_inputs(4, kimg=500.0)
    D = CameraRecordingD(fake, real, wrong)
    d = make_loss(RecordingG(), D, wrong_camera_weight=weight).discriminator_loss(
        x.dmain, x.real, x.dmain_real_patch, 500.0)
    expected = torch.nn.functional.softplus(fake).mean() + torch.nn.functional.softplus(-real).mean()
    if weight == 0:
        assert len(D.calls) == 2 and "scores/real_wrong_camera" not in d.stats
        torch.testing.assert_close(d.loss, expected)
        return
    torch.testing.assert_close(d.loss, expected + weight * torch.nn.functional.softplus(wrong).mean())
    (real_images, real_cameras), (wrong_images, wrong_cameras) = D.calls[1], D.calls[2]
    assert torch.equal(real_cameras, x.real.camera_angles)
    assert torch.equal(wrong_images, real_images)
    assert torch.equal(wrong_cameras, x.real.camera_angles[[3, 0, 1, 2]])
    (d_wrong,) = torch.autograd.grad(d.loss, wrong)
    assert (d_wrong > 0).all()  # D lowers the logits of a real image at a camera it was not taken from
    assert d.stats["scores/real_wrong_camera"] == pytest.approx(wrong.mean().item())
    assert d.stats["loss/D"] == pytest.approx(d.loss.item())


def test_a_matching_aware_d_needs_camera_conditioning_and_two_images_a_batch():
    with pytest.raises(ValueError, match="camera-conditioned D"):
        make_loss(RecordingG(), PresetD(), wrong_camera_weight=0.5)
    x = phase_inputs(1)
    loss = make_loss(RecordingG(), CameraRecordingD(torch.zeros(1), torch.zeros(1)), wrong_camera_weight=0.5)
    with pytest.raises(ValueError, match="≥ 2 images a batch"):
        loss.discriminator_loss(x.dmain, x.real, x.dmain_real_patch, 0.0)
