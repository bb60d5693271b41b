"""Face geometry without the detector (epigraf.faces.head_pose, align, detector.nms): the pose solver on synthetic
landmarks, its camera convention against the generator's, the FFHQ alignment rule, and NMS."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from epigraf.cameras import cam2world_matrices
from epigraf.faces import FACE_TEMPLATE, Alignment, crop_aligned, estimate_pose, ffhq_alignment
from epigraf.faces.align import outside_fraction
from epigraf.faces.detector import nms
from epigraf.faces.head_pose import HEAD_TO_WORLD, camera_angles, project, rotation_from_camera_angles, shifted_template

# Landmarks at an FFHQ-like 256² crop's scale: eye distance 64 px.
SCALE = 64 / 62
CENTRE = np.array([128.0, 128.0])


def angle_errors_deg(estimated: np.ndarray, true: np.ndarray) -> np.ndarray:
    d = np.asarray(estimated) - np.asarray(true)
    return np.degrees(np.abs((d + math.pi) % (2 * math.pi) - math.pi))


def synthetic(angles, noise: float = 0.0, rng: np.random.Generator | None = None, template=FACE_TEMPLATE):
    """The template seen by the camera at ``angles``, projected, plus Gaussian noise (share of the eye distance)."""
    u = project(rotation_from_camera_angles(np.asarray(angles, dtype=np.float64)), SCALE, CENTRE, template)
    return u if noise == 0 else u + rng.normal(0, noise * 64, u.shape)


def random_angles(rng: np.random.Generator, n: int) -> np.ndarray:
    """Yaw ±45°, pitch 90° ± 20°, roll ±11°: the poses of portrait photos."""
    return np.stack([rng.uniform(-0.8, 0.8, n), math.pi / 2 + rng.uniform(-0.35, 0.35, n),
                     rng.uniform(-0.2, 0.2, n)], axis=1)


def test_exact_landmarks_give_the_angles_back():
    for angles in random_angles(np.random.default_rng(0), 20):
        pose = estimate_pose(synthetic(angles))
        assert angle_errors_deg(pose.angles, angles).max() < 1e-4
        assert pose.rms < 1e-6 and abs(pose.mouth_shift) < 1e-6


def test_noisy_landmarks_give_the_angles_back_within_stated_errors():
    """Landmark noise σ = 2 % of the eye distance (1.3 px at 256², about MTCNN's error on a sharp photo): mean
    absolute error under 2.5° in yaw and pitch and 1.5° in roll, none over 8° (measured over 200 poses: means
    1.6°, 1.8°, 0.7°; largest 5.3°, 7.0°, 3.0°)."""
    rng = np.random.default_rng(1)
    truth = random_angles(rng, 60)
    errors = np.array([angle_errors_deg(estimate_pose(synthetic(a, 0.02, rng)).angles, a) for a in truth])
    mean = errors.mean(axis=0)
    assert mean[0] < 2.5 and mean[1] < 2.5 and mean[2] < 1.5, mean
    assert errors.max() < 8, errors.max(axis=0)


def test_the_pose_matches_the_generators_camera():
    """The head rotation a camera sees is its world → camera rotation applied to the head's world axes."""
    for angles in ([0.0, math.pi / 2, 0.0], [0.5, 1.2, 0.0], [-0.7, 1.9, 0.0]):
        c2w = cam2world_matrices(torch.tensor([angles], dtype=torch.float64), 1.0)[0, :3, :3].numpy()
        np.testing.assert_allclose(rotation_from_camera_angles(np.array(angles)), c2w.T @ HEAD_TO_WORLD, atol=1e-12)
        np.testing.assert_allclose(camera_angles(c2w.T @ HEAD_TO_WORLD), angles, atol=1e-12)


def test_frontal_yaw_and_pitch_signs():
    """Frontal → (0, π/2, 0); positive yaw: the nose moves to the image's right of the eyes' midpoint; pitch
    below π/2 (camera above): the nose moves down towards the mouth."""
    np.testing.assert_allclose(estimate_pose(synthetic([0, math.pi / 2, 0])).angles, [0, math.pi / 2, 0], atol=1e-9)
    right = synthetic([0.3, math.pi / 2, 0])
    assert right[2, 0] > (right[0, 0] + right[1, 0]) / 2 + 5
    level, above = synthetic([0, math.pi / 2, 0]), synthetic([0, math.pi / 2 - 0.3, 0])
    assert (above[2, 1] - above[0, 1]) / (above[3, 1] - above[0, 1]) > (level[2, 1] - level[0, 1]) / (
        level[3, 1] - level[0, 1]) + 0.05


def test_mirrored_landmarks_negate_yaw_and_roll():
    rng = np.random.default_rng(2)
    for angles in random_angles(rng, 10):
        u = synthetic(angles, 0.02, rng)
        mirrored = u[[1, 0, 2, 4, 3]] * [-1, 1] + [256, 0]
        a, b = estimate_pose(u).angles, estimate_pose(mirrored).angles
        np.testing.assert_allclose(b, [-a[0], a[1], -a[2]], atol=1e-5)


def test_a_smile_does_not_read_as_pitch():
    """Mouth corners raised 8 mm (a smile): the angles move by less than 2° and the shift is found (a rigid
    template, δ's prior made tiny, puts pitch 8° off)."""
    truth = np.array([0.2, math.pi / 2, 0.0])
    pose = estimate_pose(synthetic(truth, template=shifted_template(8.0)))
    assert angle_errors_deg(pose.angles, truth).max() < 2
    assert pose.mouth_shift > 5


def test_bad_landmarks_are_errors():
    with pytest.raises(ValueError, match="five finite landmarks"):
        estimate_pose(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="same point"):
        estimate_pose(np.zeros((5, 2)))


# ----------------------------------------------------------------------------- FFHQ alignment


def upright_landmarks(eye_distance: float = 40.0, mouth_drop: float = 44.0) -> np.ndarray:
    e = eye_distance / 2
    return np.array([[100 - e, 100], [100 + e, 100], [100, 125], [100 - 0.8 * e, 100 + mouth_drop],
                     [100 + 0.8 * e, 100 + mouth_drop]])


def test_ffhq_rule_on_an_upright_face():
    """Centre: 10 % of the way from the eyes to the mouth; side: 4 eye distances, or 3.6 eye-to-mouth distances
    when that is larger; axes along the photo's."""
    a = ffhq_alignment(upright_landmarks(40, 44))
    np.testing.assert_allclose(a.center, [100, 104.4])
    np.testing.assert_allclose(a.x_axis, [80, 0], atol=1e-12)
    np.testing.assert_allclose(a.y_axis, [0, 80], atol=1e-12)
    assert ffhq_alignment(upright_landmarks(40, 50)).side == pytest.approx(3.6 * 50)


def test_ffhq_rule_follows_a_rotated_photo():
    lm = upright_landmarks()
    angle = math.radians(25)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    turned = (lm - 100) @ rot.T + 100
    a, b = ffhq_alignment(lm), ffhq_alignment(turned)
    np.testing.assert_allclose(b.x_axis, rot @ a.x_axis, atol=1e-9)
    np.testing.assert_allclose(b.to_crop(turned, 256), a.to_crop(lm, 256), atol=1e-9)
    np.testing.assert_allclose(b.to_photo(b.to_crop(turned, 256), 256), turned, atol=1e-9)


def test_crop_puts_a_photo_point_where_to_crop_says():
    photo = np.zeros((300, 400, 3), np.uint8)
    photo[100:104, 200:204] = 255  # a dot centred on (202, 102)
    a = Alignment(center=np.array([180.0, 120.0]), x_axis=np.array([60.0, 20.0]), y_axis=np.array([-20.0, 60.0]))
    crop = crop_aligned(photo, a, 64).astype(np.float64).sum(axis=2)
    rows, cols = np.mgrid[:64, :64] + 0.5
    found = np.array([(crop * cols).sum(), (crop * rows).sum()]) / crop.sum()
    np.testing.assert_allclose(found, a.to_crop(np.array([202.0, 102.0]), 64), atol=0.2)


def test_crop_outside_the_photo_is_mirrored_in():
    photo = np.zeros((100, 100, 3), np.uint8)
    photo[:, :50] = 200  # bright left half
    a = Alignment(center=np.array([0.0, 50.0]), x_axis=np.array([40.0, 0.0]), y_axis=np.array([0.0, 40.0]))
    assert outside_fraction(a, 100, 100) == pytest.approx(0.5)
    assert crop_aligned(photo, a, 32).min() > 150  # the bright band left of x = 40, mirrored: no black border


# ----------------------------------------------------------------------------- detector pieces


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [2, 2, 6, 6]], dtype=torch.float32)
    scores = torch.tensor([0.8, 0.9, 0.7, 0.95])
    assert nms(boxes, scores, 0.5).tolist() == [3, 1, 2]  # the nested small box overlaps little by IoU
    assert nms(boxes, scores, 0.5, by_min=True).tolist() == [3, 2]  # ... but fully by the smaller area
    assert nms(boxes[:0], scores[:0], 0.5).numel() == 0

