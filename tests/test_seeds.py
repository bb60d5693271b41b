"""Seeds: z as the original's scripts, seed ranges, classes, (per-class) truncation, W interpolation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from epigraf.nn.generator import Generator
from epigraf.seeds import (
    class_mean_ws,
    interpolate_ws,
    one_hot,
    parse_seeds,
    seed_classes,
    seeds_to_ws,
    seeds_to_z,
)
from test_generator import tiny_generator_config


def tiny_generator(c_dim: int = 0) -> Generator:
    torch.manual_seed(0)
    G = Generator(dataclasses.replace(tiny_generator_config(), c_dim=c_dim)).eval()
    G.mapping.w_avg.normal_()  # a non-trivial truncation centre
    return G


def test_parse_seeds():
    assert parse_seeds("0-3,12") == [0, 1, 2, 3, 12]
    assert parse_seeds(["5", "1-2"]) == [5, 1, 2]
    assert parse_seeds(" 7 - 7 ") == [7]
    for bad in ("3-1", "a", "", "-2", "1,,2", "4294967296"):
        with pytest.raises(ValueError):
            parse_seeds(bad)
    with pytest.raises(ValueError, match=r"^--seeds '0-2,x': 'x' is not a seed or a range of seeds; give whole "
                                         r"numbers from 0 to 4,294,967,295 and inclusive ranges, e.g. --seeds 0-7,12$"):
        parse_seeds("0-2,x")
    with pytest.raises(ValueError, match=r"^--seeds '1,3-1': '3-1' is a range whose end is below its start$"):
        parse_seeds("1,3-1")


def test_seeds_are_numpy_randomstate_normals():
    z = seeds_to_z([3, 0, 3], 16)
    assert z.shape == (3, 16) and z.dtype == torch.float32
    assert torch.equal(z[0], torch.from_numpy(np.random.RandomState(3).randn(16)).float())
    assert torch.equal(z[0], z[2]) and not torch.equal(z[0], z[1])


def test_classes_given_or_random_per_seed():
    assert seed_classes([1, 2, 3], 16, 5, class_index=4) == [4, 4, 4]
    random = seed_classes(list(range(40)), 16, 5)
    assert random == seed_classes(list(range(40)), 16, 5)  # a seed always names the same class
    assert set(random) == set(range(5))
    assert seed_classes([1], 16, 0) == []
    with pytest.raises(ValueError, match=r"--class-index must be in \[0, 5\)"):
        seed_classes([1], 16, 5, class_index=5)
    with pytest.raises(ValueError, match=r"--class-index must be in \[0, 0\)"):
        seed_classes([1], 16, 0, class_index=0)
    assert torch.equal(one_hot([2, 0], 3), torch.tensor([[0.0, 0, 1], [1, 0, 0]]))


def test_unconditional_truncation_goes_towards_w_avg():
    G = tiny_generator()
    ws = seeds_to_ws(G, [0, 1], truncation_psi=0.0)
    assert ws.shape == (2, G.num_ws, 16)
    assert torch.allclose(ws, G.mapping.w_avg.expand_as(ws))
    full = seeds_to_ws(G, [0, 1], truncation_psi=1.0)
    half = seeds_to_ws(G, [0, 1], truncation_psi=0.5)
    assert torch.allclose(half, (full + ws) / 2, atol=1e-6)


def test_conditional_truncation_goes_towards_the_class_mean():
    G = tiny_generator(c_dim=3)
    centre = seeds_to_ws(G, [0, 1], truncation_psi=0.0, class_index=2)
    z = torch.from_numpy(np.random.RandomState(0).randn(256, 16)).float()
    expected = G.mapping(z, one_hot([2] * 256, 3)).mean(dim=0)
    assert torch.allclose(centre, expected.expand_as(centre), atol=1e-5)
    assert not torch.allclose(centre, G.mapping.w_avg.expand_as(centre), atol=1e-3)  # not the global mean
    other = class_mean_ws(G, [0, 2])
    assert not torch.allclose(other[0], other[1])
    assert torch.allclose(other[1], expected, atol=1e-5)
    untruncated = seeds_to_ws(G, [4], truncation_psi=1.0, class_index=1)
    assert torch.allclose(untruncated[0], G.mapping(seeds_to_z([4], 16), one_hot([1], 3))[0])


def test_w_interpolation_is_piecewise_linear_through_the_keyframes():
    keys = torch.randn(3, 4, 5)
    path = interpolate_ws(keys, 9)  # keyframes at frames 0, 4, 8
    assert path.shape == (9, 4, 5)
    for frame, key in ((0, 0), (4, 1), (8, 2)):
        assert torch.allclose(path[frame], keys[key])
    assert torch.allclose(path[2], (keys[0] + keys[1]) / 2)
    assert torch.allclose(path[7], keys[1] + 0.75 * (keys[2] - keys[1]))
    with pytest.raises(ValueError, match="2 keyframes"):
        interpolate_ws(keys[:1], 4)
