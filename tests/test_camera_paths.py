"""Camera paths (docs/method.md §7.2): the original's formulas, frame counts, seamless loops, pitch kept in (0, π)."""

from __future__ import annotations

import math

import pytest
import torch

from epigraf.cameras.paths import PATHS, camera_path, front_circle, line, orbit, points, take, wiggle


@pytest.mark.parametrize("name", PATHS)
def test_every_path_gives_t_cameras_with_valid_pitch(name):
    cams = camera_path(name, 10, fov=30.0, radius=1.5)
    assert cams.angles.shape == (10, 3) and cams.fov.shape == (10,) and cams.radius.shape == (10,)
    assert (cams.angles[:, 1] > 0).all() and (cams.angles[:, 1] < math.pi).all()
    assert (cams.angles[:, 2] == 0).all()
    assert torch.allclose(cams.radius, torch.full((10,), 1.5))


def test_front_circle_follows_the_original_formula():
    cams = front_circle(fov=12.0)
    assert len(cams.fov) == 64  # the original's default
    t = torch.arange(64) / 64
    assert torch.allclose(cams.angles[:, 0], 0.3 * torch.sin(2 * math.pi * t), atol=1e-6)
    assert torch.allclose(cams.angles[:, 1], math.pi / 2 + 0.2 * torch.cos(2 * math.pi * t), atol=1e-6)
    assert torch.allclose(cams.fov, 12.0 + torch.sin(2 * math.pi * t), atol=1e-5)
    # Quarter period: furthest to the side, on the horizon, most zoomed out.
    assert cams.angles[16, 0].item() == pytest.approx(0.3) and cams.fov[16].item() == pytest.approx(13.0)


def test_wiggle_sweeps_yaw_end_to_end_and_swings_pitch():
    cams = wiggle(9)
    assert cams.angles[0, 0].item() == pytest.approx(-1.57) and cams.angles[-1, 0].item() == pytest.approx(1.57)
    assert cams.angles[0, 1].item() == pytest.approx(math.pi / 2 + 0.5)
    assert cams.angles[4, 1].item() == pytest.approx(math.pi / 2 - 0.5)
    assert (cams.angles[1:, 0] > cams.angles[:-1, 0]).all()


def test_line_hits_both_ends():
    cams = line(5, start=(-0.2, 1.2), end=(0.4, 1.8))
    assert torch.allclose(cams.angles[[0, -1], :2], torch.tensor([[-0.2, 1.2], [0.4, 1.8]]))
    assert torch.allclose(cams.angles[2, :2], torch.tensor([0.1, 1.5]))


def test_orbit_is_a_full_seamless_turn():
    cams = orbit(8, pitch=1.2)
    step = 2 * math.pi / 8
    assert torch.allclose(cams.angles[:, 0], torch.arange(8) * step)
    assert cams.angles[-1, 0].item() + step == pytest.approx(2 * math.pi)  # the next frame is the first again
    assert torch.allclose(cams.angles[:, 1], torch.full((8,), 1.2))


def test_pitch_beyond_the_poles_is_clamped():
    cams = front_circle(16, pitch_amplitude=3.0)
    assert cams.angles[:, 1].min() > 0 and cams.angles[:, 1].max() < math.pi
    assert cams.angles[0, 1].item() == pytest.approx(math.pi, abs=1e-4)


def test_points_are_explicit_and_checked():
    cams = points([0.0, -0.3, 0.3], pitches=[1.5, 1.6, 0.0], fov=20.0, radius=2.0)
    assert torch.allclose(cams.angles[:, 0], torch.tensor([0.0, -0.3, 0.3]))
    assert cams.angles[2, 1].item() > 0  # a pole is moved just inside (0, π)
    assert torch.equal(cams.fov, torch.full((3,), 20.0))
    with pytest.raises(ValueError, match="pitch must be in"):
        points([0.0], pitches=90.0)
    with pytest.raises(ValueError, match="2 pitches for 1 yaws"):
        points([0.0], pitches=[1.0, 2.0])


def test_take_and_unknown_names():
    cams = orbit(6)
    part = take(cams, slice(2, 4))
    assert torch.equal(part.angles, cams.angles[2:4])
    assert torch.equal(take(cams, [5, 5]).angles, cams.angles[[5, 5]])
    with pytest.raises(ValueError, match="unknown camera path"):
        camera_path("spiral", 4, 12.0, 1.0)
    with pytest.raises(ValueError, match="at least 1 frame"):
        orbit(0)
