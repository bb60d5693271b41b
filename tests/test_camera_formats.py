"""Camera-format conversions (docs/method.md §2.1, §13): round trips, anchors, rays, and every bad input."""

from __future__ import annotations

import json
import math
import warnings
import zipfile
from collections.abc import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from epigraf.cameras import Cameras
from epigraf.cameras import conventions as cc
from epigraf.cameras import formats as cf
from epigraf.cameras.rays import pixel_grid, world_rays
from epigraf.data.convert import ConvertOptions, convert_dataset
from epigraf.data.poses import load_poses

TOL = 1e-6


def random_poses(n: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Angles [n, 3] away from the poles (yaw is ill-defined there), radius [n], fov [n]."""
    rng = np.random.default_rng(seed)
    angles = np.stack([rng.uniform(-math.pi + 1e-3, math.pi - 1e-3, n), rng.uniform(0.05, math.pi - 0.05, n),
                       np.zeros(n)], axis=1)
    return angles, rng.uniform(0.5, 4.0, n), rng.uniform(5.0, 70.0, n)


# Each format: encode (angles, radius, fov) → its representation, and decode it back to (angles, radius, fov).
Codec = tuple[Callable[..., object], Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray | None]]]


def _decoded(conv: cc.PoseConversion, fov: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    return conv.angles, conv.radius, fov if conv.fov is None else conv.fov


CODECS: dict[str, Codec] = {
    "angles": (lambda a, r, f: (a, r, f), lambda x, f: x),
    "opengl": (lambda a, r, f: cc.angles_to_cam2world(a, r),
               lambda x, f: _decoded(cc.cam2world_to_angles(x), f)),
    "opencv": (lambda a, r, f: cf.angles_to_matrices(a, r, axes="opencv"),
               lambda x, f: _decoded(cf.matrices_to_angles(x, axes="opencv"), f)),
    "opencv-eg3d-world": (lambda a, r, f: cf.angles_to_matrices(a, r, axes="opencv", world="eg3d"),
                          lambda x, f: _decoded(cf.matrices_to_angles(x, axes="opencv", world="eg3d"), f)),
    "eg3d": (lambda a, r, f: cf.angles_to_eg3d(a, r, f), lambda x, f: _decoded(cf.eg3d_to_angles(x), None)),
    "blender": (lambda a, r, f: cf.angles_to_blender(a, r), lambda x, f: _decoded(cf.blender_to_angles(x), f)),
    "blender-gltf": (lambda a, r, f: cf.angles_to_blender(a, r, world="blender-gltf"),
                     lambda x, f: _decoded(cf.blender_to_angles(x, world="blender-gltf"), f)),
}


def assert_same_poses(got: tuple, want: tuple) -> None:
    angles, radius, fov = got
    np.testing.assert_allclose(cc.wrap_angle(angles[:, 0] - want[0][:, 0]), 0, atol=TOL)
    np.testing.assert_allclose(angles[:, 1:], want[0][:, 1:], atol=TOL)
    np.testing.assert_allclose(radius, want[1], atol=TOL)
    np.testing.assert_allclose(fov, want[2], atol=TOL)


@pytest.mark.parametrize("name", list(CODECS))
def test_round_trip_each_format(name: str) -> None:
    poses = random_poses()
    encode, decode = CODECS[name]
    assert_same_poses(decode(encode(*poses), poses[2]), poses)


@pytest.mark.parametrize("src", list(CODECS))
@pytest.mark.parametrize("dst", list(CODECS))
def test_round_trip_every_format_pair(src: str, dst: str) -> None:
    poses = random_poses(16, seed=1)
    via_src = CODECS[src][1](CODECS[src][0](*poses), poses[2])
    via_dst = CODECS[dst][1](CODECS[dst][0](*via_src), poses[2])
    assert_same_poses(via_dst, poses)


def test_gl_cv_flip_is_an_involution_and_keeps_the_camera() -> None:
    m = cc.angles_to_cam2world(*random_poses(8)[:2])
    cv = cf.opengl_to_opencv(m)
    np.testing.assert_allclose(cf.opencv_to_opengl(cv), m, atol=1e-12)
    np.testing.assert_allclose(cv[:, :3, 2], -m[:, :3, 2])  # OpenCV looks along +z
    np.testing.assert_allclose(cv[:, :3, 1], -m[:, :3, 1])  # and its y points down the image
    np.testing.assert_allclose(cv[:, :3, 3], m[:, :3, 3])


def test_frontal_camera_anchors() -> None:
    """The documented frontal camera in each format (docs/method.md §11.5 for ours)."""
    frontal = np.array([[0.0, math.pi / 2, 0.0]])
    ours = cc.angles_to_cam2world(frontal, 1.0)[0]
    np.testing.assert_allclose(ours[:3, 3], [1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(ours[:3, 0], [0, 0, -1], atol=1e-12)  # image right
    np.testing.assert_allclose(ours[:3, 1], [0, 1, 0], atol=1e-12)  # image up
    # EG3D: camera on +z looking at the origin, OpenCV axes: image right +x, image down −y.
    eg3d = cf.angles_to_eg3d(frontal, 2.7, 18.837)[0]
    np.testing.assert_allclose(eg3d[:16].reshape(4, 4), [[1, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 2.7], [0, 0, 0, 1]],
                               atol=1e-12)
    np.testing.assert_allclose(eg3d[16:].reshape(3, 3)[0, 0], 0.5 / math.tan(math.radians(18.837) / 2))
    # Blender: the Front view, camera on −y looking along +y, z up, i.e. rotation (90°, 0, 0).
    blender = cf.angles_to_blender(frontal, 3.0)[0]
    np.testing.assert_allclose(blender, [[1, 0, 0, 0], [0, 0, -1, -3], [0, 1, 0, 0], [0, 0, 0, 1]], atol=1e-12)


def pinhole_rays_eg3d(label: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Rays of every pixel read straight from an EG3D label, independently of our conversion code:
    OpenCV pinhole with normalised intrinsics (pixel j ↦ u = j/(size−1)), then EG3D's world → ours."""
    c2w, k = label[:16].reshape(4, 4), label[16:].reshape(3, 3)
    u = np.arange(size) / (size - 1)
    uu, vv = np.meshgrid(u, u)  # rows = v (downwards), columns = u
    pix = np.stack([uu.ravel(), vv.ravel(), np.ones(size * size)], axis=1)
    d_cam = pix @ np.linalg.inv(k).T
    d_world = d_cam @ c2w[:3, :3].T
    d_world /= np.linalg.norm(d_world, axis=1, keepdims=True)
    rot = cf.WORLDS["eg3d"]
    return rot @ c2w[:3, 3], d_world @ rot.T


def test_eg3d_labels_give_the_same_rays_as_the_original_poses() -> None:
    """A scene's known cameras → EG3D labels: every pixel's ray (read from the label as EG3D defines it, and
    after converting back) equals the renderer's ray of the original pose."""
    angles, radius, fov = random_poses(6, seed=3)
    size = 9
    labels = cf.angles_to_eg3d(angles, radius, fov)
    back = cf.eg3d_to_angles(labels)
    grid = pixel_grid(size, size).unsqueeze(0).double()

    def renderer_rays(a: np.ndarray, r: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cams = Cameras(torch.from_numpy(a), torch.from_numpy(f), torch.from_numpy(r))
        o, d = world_rays(cams, grid)
        return o.numpy(), d.numpy()

    o_ref, d_ref = renderer_rays(angles, radius, fov)
    o_back, d_back = renderer_rays(back.angles, back.radius, back.fov)
    np.testing.assert_allclose(o_back, o_ref, atol=TOL)
    np.testing.assert_allclose(d_back, d_ref, atol=TOL)
    for i, label in enumerate(labels):
        o, d = pinhole_rays_eg3d(label, size)
        np.testing.assert_allclose(o, o_ref[i], atol=TOL)
        np.testing.assert_allclose(d, d_ref[i], atol=TOL)


def test_projected_points_land_on_the_same_pixels() -> None:
    """Project scene points with an EG3D camera (K · world2cam) and with our pose: same pixel coordinates."""
    angles, radius, fov = np.array([[0.4, 1.3, 0.0]]), np.array([2.0]), np.array([30.0])
    label = cf.angles_to_eg3d(angles, radius, fov)[0]
    c2w_cv, k = label[:16].reshape(4, 4), label[16:].reshape(3, 3)
    points_ours = np.random.default_rng(0).uniform(-0.3, 0.3, (20, 3))
    points_eg3d = points_ours @ cf.WORLDS["eg3d"]  # ours = W · eg3d ⇒ eg3d = Wᵀ · ours
    p_cv = (points_eg3d - c2w_cv[:3, 3]) @ c2w_cv[:3, :3]
    uvw = p_cv @ k.T
    uv_eg3d = uvw[:, :2] / uvw[:, 2:]
    c2w = cc.angles_to_cam2world(angles, radius)[0]
    p_gl = (points_ours - c2w[:3, 3]) @ c2w[:3, :3]
    plane = p_gl[:, :2] / -p_gl[:, 2:] * (1 / math.tan(math.radians(fov[0]) / 2))  # our x', y' ∈ [−1, 1]
    np.testing.assert_allclose(uv_eg3d[:, 0], (plane[:, 0] + 1) / 2, atol=TOL)
    np.testing.assert_allclose(uv_eg3d[:, 1], (1 - plane[:, 1]) / 2, atol=TOL)


def test_fov_and_radius_helpers() -> None:
    k = cf.intrinsics_from_fov([12.0, 30.0])
    np.testing.assert_allclose(cf.fov_from_intrinsics(k), [12.0, 30.0], atol=1e-12)
    np.testing.assert_allclose(k[:, 0, 2], 0.5)
    m = cc.angles_to_cam2world(random_poses(4)[0], [1.0, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(cc.radius_from_cam2world(m), [1, 2, 3, 4], atol=1e-12)


def test_zero_centre_yaw_shifts_by_the_circular_mean() -> None:
    yaw = np.array([3.0, -3.1, 2.9, 3.05])  # clustered around ±π: the arithmetic mean would be wrong
    angles = np.stack([yaw, np.full(4, 1.5), np.zeros(4)], axis=1)
    centred, report = cc.zero_centre_yaw(angles)
    assert report.applied
    assert report.shift == pytest.approx(np.mean(yaw % (2 * math.pi)), abs=1e-3)
    assert cc.circular_mean(centred[:, 0])[0] == pytest.approx(0.0, abs=1e-12)
    assert np.abs(centred[:, 0]).max() < 0.2
    assert "circular mean is 0" in str(report)
    np.testing.assert_array_equal(centred[:, 1:], angles[:, 1:])


def test_zero_centre_yaw_leaves_a_full_circle_alone() -> None:
    yaw = np.linspace(-math.pi, math.pi, 24, endpoint=False)
    angles = np.stack([yaw, np.full(24, 1.5), np.zeros(24)], axis=1)
    with pytest.warns(cc.CameraPoseWarning, match="covers the full circle"):
        out, report = cc.zero_centre_yaw(angles)
    assert not report.applied
    np.testing.assert_array_equal(out, angles)


def test_yaw_centring_warning_reports_the_mean() -> None:
    angles = np.stack([np.full(5, 0.5), np.full(5, 1.5), np.zeros(5)], axis=1)
    assert "circular mean is 0.5000 rad" in cc.yaw_centring_warning(angles)
    assert cc.yaw_centring_warning(angles * [0, 1, 1]) is None


# --------------------------------------------------------------------------------------------------
# Bad inputs: each gives a clear error or warning
# --------------------------------------------------------------------------------------------------

def _look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """OpenGL cam2world of a level camera at ``eye`` looking at ``target``."""
    f = (target - eye) / np.linalg.norm(target - eye)
    left = np.cross([0.0, 1.0, 0.0], f)
    left /= np.linalg.norm(left)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = -left, np.cross(f, left), -f, eye
    return m


def test_non_look_at_pose_warns_and_center_fixes_it() -> None:
    target = np.array([0.0, 0.0, 0.3])
    eyes = [np.array([2.0, 0.5, 1.0]), np.array([1.5, -0.2, -1.5]), np.array([0.3, 1.0, 2.5])]
    m = np.stack([_look_at(e, target) for e in eyes])
    with pytest.warns(cc.CameraPoseWarning, match="do not look at the origin"):
        conv = cc.cam2world_to_angles(m)
    assert conv.off_axis_deg.max() > 1.0
    point, rms = cf.estimate_look_at(m)
    np.testing.assert_allclose(point, target, atol=1e-9)
    assert rms < 1e-9
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fixed = cf.matrices_to_angles(m, center=target)
    np.testing.assert_allclose(fixed.off_axis_deg, 0, atol=1e-6)


def test_roll_warns_and_is_measured() -> None:
    m = cc.angles_to_cam2world([[0.3, 1.2, 0.0]])
    roll = math.radians(10)
    rz = np.array([[math.cos(roll), -math.sin(roll), 0], [math.sin(roll), math.cos(roll), 0], [0, 0, 1]])
    m[0, :3, :3] = m[0, :3, :3] @ rz  # turn the camera about its optical axis
    with pytest.warns(cc.CameraPoseWarning, match="have roll"):
        conv = cc.cam2world_to_angles(m)
    assert conv.roll_deg[0] == pytest.approx(10.0, abs=1e-9)
    np.testing.assert_allclose(conv.angles[0, :2], [0.3, 1.2], atol=1e-12)


@pytest.mark.parametrize(("angles", "message"), [
    ([[30.0, 90.0, 0.0]], "look like degrees"),
    ([[0.0, -0.2, 0.0]], r"pitch outside \(0, π\)"),
    ([[0.0, 0.0, 0.0]], r"pitch outside \(0, π\)"),
    ([[4.0, 1.5, 0.0]], r"yaw outside \[−π, π\]"),
    ([[0.0, 1.5]], r"must be \[N, 3\]"),
])
def test_bad_angles_are_errors(angles: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cc.angles_to_cam2world(angles)


@pytest.mark.parametrize(("matrix", "message"), [
    (np.zeros((2, 4, 3)), r"must be \[N, 4, 4\]"),
    (np.eye(4)[None].repeat(2, 0)[:, :, :2], r"must be \[N, 4, 4\]"),
    (np.diag([2.0, 2.0, 2.0, 1.0]) + np.eye(4, k=3), "not orthonormal"),
    (np.diag([1.0, 1.0, -1.0, 1.0]) + np.eye(4, k=3), "det −1"),
    (np.eye(4) + np.eye(4, k=-3), "bottom row"),
    (np.eye(4), "at the world origin"),
])
def test_bad_matrices_are_errors(matrix: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cc.cam2world_to_angles(matrix)


def test_bad_eg3d_labels() -> None:
    good = cf.angles_to_eg3d([[0.1, 1.4, 0.0]], 2.7, 18.0)
    with pytest.raises(ValueError, match="25 numbers per image"):
        cf.eg3d_to_angles(good[:, :24])
    unnormalised = good.copy()
    unnormalised[0, 16:] *= 512
    unnormalised[0, 24] = 1.0
    with pytest.raises(ValueError, match="un-normalised"):
        cf.eg3d_to_angles(unnormalised)
    anisotropic = good.copy()
    anisotropic[0, 20] *= 1.1
    with pytest.raises(ValueError, match="fx ≠ fy"):
        cf.eg3d_to_angles(anisotropic)
    shifted = good.copy()
    shifted[0, 18] = 0.55
    with pytest.warns(cc.CameraPoseWarning, match="not at the image centre"):
        cf.eg3d_to_angles(shifted)


def test_unknown_world_and_axes_are_errors() -> None:
    with pytest.raises(ValueError, match="unknown world axes"):
        cf.angles_to_matrices([[0, 1, 0]], world="maya")
    with pytest.raises(ValueError, match="camera axes must be one of"):
        cf.angles_to_matrices([[0, 1, 0]], axes="directx")
    with pytest.raises(ValueError, match="3×3 rotation"):
        cf.to_epigraf_world(np.eye(4), world=np.eye(3) * 2)


# --------------------------------------------------------------------------------------------------
# Pose files and conversion: missing entries, non-square images
# --------------------------------------------------------------------------------------------------

def _images(folder, n: int, size: tuple[int, int] = (8, 8)) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = [f"img{i:02d}.png" for i in range(n)]
    for name in names:
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(folder / name)
    return names


def test_missing_pose_entries_are_an_error(tmp_path) -> None:
    names = _images(tmp_path / "imgs", 4)
    labels = cf.angles_to_eg3d(random_poses(3)[0] * [0.2, 0, 0] + [0, 1.5, 0], 2.7, 18.0)
    entries = [[n, lab.tolist()] for n, lab in zip(names, labels, strict=False)]  # no pose for the last image
    (tmp_path / "poses.json").write_text(json.dumps({"labels": entries}))
    poses = load_poses(tmp_path / "poses.json", "eg3d")
    with pytest.raises(ValueError, match=r"1 of 4 images have no pose entry, e.g. 'img03.png'"):
        convert_dataset(tmp_path / "imgs", tmp_path / "out.zip", poses)
    assert not (tmp_path / "out.zip").exists()


def test_ordered_pose_array_must_match_the_image_count(tmp_path) -> None:
    _images(tmp_path / "imgs", 3)
    np.save(tmp_path / "poses.npy", cc.angles_to_cam2world(random_poses(2)[0] * [0.2, 0, 0] + [0, 1.5, 0]))
    with pytest.raises(ValueError, match="2 poses but 3 images"):
        convert_dataset(tmp_path / "imgs", tmp_path / "out.zip", load_poses(tmp_path / "poses.npy", "opengl"))


def test_non_square_images_need_crop(tmp_path) -> None:
    _images(tmp_path / "imgs", 2, size=(12, 8))
    with pytest.raises(ValueError, match=r"2 images are not square, e.g. 'img00.png' \(12×8\); pass --crop"):
        convert_dataset(tmp_path / "imgs", tmp_path / "out.zip", None)
    result = convert_dataset(tmp_path / "imgs", tmp_path / "out.zip", None, ConvertOptions(crop=True))
    assert result.resolution == 8


def test_degrees_in_a_pose_file_are_an_error(tmp_path) -> None:
    names = _images(tmp_path / "imgs", 2)
    (tmp_path / "poses.json").write_text(json.dumps({"camera_angles": {n: [10.0, 90.0, 0.0] for n in names}}))
    with pytest.raises(ValueError, match="look like degrees"):
        convert_dataset(tmp_path / "imgs", tmp_path / "out.zip", load_poses(tmp_path / "poses.json", "epigraf"))


def test_blender_transforms_json_with_crop_adjusts_the_fov(tmp_path) -> None:
    names = _images(tmp_path / "imgs", 3, size=(16, 8))
    angles = np.array([[-0.2, 1.4, 0.0], [0.0, 1.5, 0.0], [0.2, 1.6, 0.0]])
    matrices = cf.angles_to_blender(angles, 4.0)
    frames = [{"file_path": f"./imgs/{n[:-4]}", "transform_matrix": m.tolist()}
              for n, m in zip(names, matrices, strict=True)]
    fov_x = math.radians(50.0)
    (tmp_path / "transforms.json").write_text(json.dumps({"camera_angle_x": fov_x, "frames": frames}))
    poses = load_poses(tmp_path / "transforms.json", "blender")
    result = convert_dataset(tmp_path / "imgs", tmp_path / "out.zip", poses, ConvertOptions(crop=True, resolution=8))
    # The square crop keeps half the width: tan(fov/2) halves.
    assert result.fov == pytest.approx(math.degrees(2 * math.atan(math.tan(fov_x / 2) / 2)))
    assert result.radius == pytest.approx(4.0)
    meta = json.loads(zipfile.ZipFile(tmp_path / "out.zip").read("dataset.json"))
    got = np.array([meta["camera_angles"][n] for n in names])
    np.testing.assert_allclose(got, angles, atol=TOL)
