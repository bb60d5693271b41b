"""NeRF++ inverted-sphere background (docs/method.md §1.6, docs/deterministic-render.md §8)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from epigraf.config import SphereBackgroundConfig
from epigraf.nn.background import SphereBackground, inverted_sphere_points

W_DIM = 32


def _rays(generator: torch.Generator, b: int = 2, p: int = 5, origin_radius: float = 1.0, dtype=torch.float32):
    """Origins at ``origin_radius`` from the world origin and random unit directions."""
    origins = F.normalize(torch.randn(b, 3, generator=generator, dtype=dtype), dim=-1) * origin_radius
    directions = F.normalize(torch.randn(b, p, 3, generator=generator, dtype=dtype), dim=-1)
    return origins, directions


def _model(generator: torch.Generator, **cfg) -> tuple[SphereBackground, torch.Tensor]:
    torch.manual_seed(0)
    model = SphereBackground(SphereBackgroundConfig(**cfg), W_DIM)
    ws = torch.randn(2, model.num_ws, W_DIM, generator=generator)
    return model, ws


def test_architecture_defaults_follow_the_original(torch_generator):
    model, _ = _model(torch_generator)
    assert model.num_ws == 4
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    # The original's bg_model keys and shapes (fixtures/original/bgsphere_G.safetensors, w_dim 32).
    assert shapes["blocks.0.conv1.weight"] == (128, 48)
    assert shapes["blocks.0.conv1.affine.weight"] == (48, W_DIM)
    assert shapes["blocks.0.to_out.weight"] == (4, 128)
    assert "blocks.0.conv0.weight" not in shapes
    assert shapes["blocks.1.conv0.weight"] == shapes["blocks.1.conv1.weight"] == (128, 128)
    assert torch.allclose(model.frequencies, torch.pi * 2.0 ** torch.arange(6))
    with pytest.raises(ValueError, match="w slots"):
        SphereBackground(SphereBackgroundConfig(num_ws=5), W_DIM)
    with pytest.raises(ValueError, match="posenc_period_len must be > 1"):
        SphereBackground(SphereBackgroundConfig(posenc_period_len=1.0), W_DIM)


def test_slots_are_shared_as_in_stylegan(torch_generator):
    """Block 0: conv1 ← 0, to_out ← 1; block 1: conv0 ← 1, conv1 ← 2, to_out ← 3."""
    model, ws = _model(torch_generator)
    seen = []
    for i, block in enumerate(model.blocks):
        for name in ("conv0", "conv1", "to_out"):
            if hasattr(block, name):
                getattr(block, name).affine.register_forward_hook(
                    lambda mod, args, out, tag=(i, name): seen.append((tag, args[0])))
    model.inr(torch.rand(2, 3, 4), ws)
    slot_of = {tag: next(s for s in range(4) if torch.equal(w, ws[:, s])) for tag, w in seen}
    assert slot_of == {(0, "conv1"): 0, (0, "to_out"): 1, (1, "conv0"): 1, (1, "conv1"): 2, (1, "to_out"): 3}


@pytest.mark.parametrize("training", [True, False])
def test_output_shape(torch_generator, training):
    model, ws = _model(torch_generator)
    model.train(training)
    origins, directions = _rays(torch_generator, p=7)
    color = model(origins, directions, ws, white_back=False, clamp_mode="softplus", deterministic=False)
    assert color.shape == (2, 7, 3)
    assert torch.isfinite(color).all()


def test_points_at_infinity_point_along_the_ray(torch_generator):
    origins, directions = _rays(torch_generator, origin_radius=0.7)
    pts = inverted_sphere_points(origins, directions, torch.zeros(2, 5, 1))
    assert torch.equal(pts[..., 0, :3], directions)
    assert torch.equal(pts[..., 0, 3], torch.zeros(2, 5))


@pytest.mark.parametrize("origin_radius", [0.0, 0.5, 1.0])
def test_points_lie_on_the_ray_and_the_unit_sphere(torch_generator, origin_radius):
    origins, directions = _rays(torch_generator, origin_radius=origin_radius, dtype=torch.float64)
    v = torch.linspace(1.0, 0.05, 9, dtype=torch.float64).expand(2, 5, 9)
    pts = inverted_sphere_points(origins, directions, v)
    unit = pts[..., :3]
    assert torch.allclose(unit.norm(dim=-1), torch.ones(2, 5, 9, dtype=torch.float64), atol=1e-12)
    assert torch.equal(pts[..., 3], v)
    # r·(x', y', z') must be o + t·d for some t ≥ 0 (the exit point, ahead of the camera; t = 0 only when the
    # camera sits on the unit sphere and looks outwards).
    offset = unit / v[..., None] - origins[:, None, None, :]
    t = (offset * directions[:, :, None, :]).sum(-1)
    assert (t > -1e-12).all()
    assert (t[..., 1:] > 0).all()
    assert torch.allclose(offset, t[..., None] * directions[:, :, None, :], atol=1e-10)


def test_deterministic_mode_is_bit_reproducible(torch_generator):
    model, ws = _model(torch_generator)
    origins, directions = _rays(torch_generator)
    kwargs = {"white_back": True, "clamp_mode": "softplus", "deterministic": True}
    model.train()
    first = model(origins, directions, ws, **kwargs)
    assert torch.equal(first, model(origins, directions, ws, **kwargs))
    model.eval()
    assert torch.equal(first, model(origins, directions, ws, **{**kwargs, "deterministic": False}))


def test_training_jitter_stays_within_bins(torch_generator):
    model, _ = _model(torch_generator)
    grid = torch.linspace(1.0, 0.0, 8)
    assert torch.equal(model.inverse_depths((3,), jitter=False), grid.expand(3, 8))
    mids = 0.5 * (grid[1:] + grid[:-1])
    upper, lower = torch.cat([grid[:1], mids]), torch.cat([mids, grid[-1:]])
    v = model.inverse_depths((1000,), jitter=True, generator=torch_generator)
    assert ((v >= lower) & (v <= upper)).all()
    assert (v[:, :-1] >= v[:, 1:]).all()
    # Each bin is actually explored, not just its grid point.
    assert ((v.amax(0) - v.amin(0)) > 0.9 * (upper - lower)).all()


def test_training_mode_draws_from_the_generator(torch_generator):
    model, ws = _model(torch_generator)
    model.train()
    origins, directions = _rays(torch_generator)

    def render(seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return model(origins, directions, ws, False, "softplus", deterministic=False, generator=gen)

    assert torch.equal(render(1), render(1))
    assert not torch.equal(render(1), render(2))


def test_rays_are_independent_so_chunking_is_exact(torch_generator):
    model, ws = _model(torch_generator)
    model.eval()
    origins, directions = _rays(torch_generator, p=6)
    args = (False, "softplus", True)
    whole = model(origins, directions, ws, *args)
    chunks = torch.cat([model(origins, directions[:, :2], ws, *args), model(origins, directions[:, 2:], ws, *args)], 1)
    assert torch.allclose(whole, chunks, atol=1e-6)


def test_ws_steer_the_colour_and_receive_gradients(torch_generator):
    model, ws = _model(torch_generator)
    model.eval()
    origins, directions = _rays(torch_generator)
    args = (False, "softplus", True)
    base = model(origins, directions, ws, *args)
    for slot in range(model.num_ws):
        other = ws.clone()
        other[:, slot] = torch.randn(2, W_DIM, generator=torch_generator)
        assert not torch.allclose(model(origins, directions, other, *args), base, atol=1e-5), slot
    ws = ws.clone().requires_grad_(True)
    model(origins, directions, ws, *args).square().sum().backward()
    assert torch.isfinite(ws.grad).all()
    assert (ws.grad.abs().sum(dim=(0, 2)) > 0).all()


@pytest.mark.parametrize("white_back", [True, False])
def test_empty_background_is_white_only_with_white_back(torch_generator, white_back):
    model, ws = _model(torch_generator)
    with torch.no_grad():
        for block in model.blocks:
            block.to_out.weight.zero_()
            block.to_out.bias.zero_()
    origins, directions = _rays(torch_generator)
    color = model(origins, directions, ws, white_back, clamp_mode="relu", deterministic=True)
    assert torch.equal(color, torch.full_like(color, 1.0 if white_back else 0.0))
