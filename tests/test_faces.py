"""Faces from real photos (epigraf.faces, ``epigraf dataset faces``, ``epigraf invert --align``).

The MTCNN weights come from the facenet-pytorch wheel (``pip install --no-deps facenet-pytorch``; .ci/run does it);
the tests that need them skip only when it is not installed. The photo is scikit-image's astronaut (512²).
"""

from __future__ import annotations

import json
import math
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from epigraf.checkpoint import save_checkpoint
from epigraf.cli import main
from epigraf.config import FFHQ_CAMERA, GeneratorConfig, ModelConfig, RenderConfig
from epigraf.data import ImageDataset
from epigraf.faces import FaceDetector, FaceWeightsMissing, NoFaceError, align_face
from epigraf.faces import nets as face_nets
from epigraf.invert import load_latent
from epigraf.nn.generator import Generator

skimage_data = pytest.importorskip("skimage.data")

# The astronaut's landmarks, placed by hand on 8× and 12× enlargements of the photo (pixel-edge coordinates:
# pixel column j spans [j, j + 1]): pupil centres (the iris' middle, by the catch-light), the nose tip's
# highlight, the outermost dark pixels where the lips meet.
HAND_LANDMARKS = np.array([[203.0, 101.0], [246.0, 103.0], [224.0, 128.0], [204.5, 140.5], [243.0, 141.5]])
LANDMARK_TOLERANCE = 4.0  # pixels; the eye distance is 43 (measured errors 0.8, 1.5, 1.3, 3.2, 1.9)
RES = 256


def mirror(landmarks: np.ndarray, width: float) -> np.ndarray:
    """Landmarks of the horizontally flipped image, back in LANDMARK_NAMES order."""
    return landmarks[[1, 0, 2, 4, 3]] * [-1, 1] + [width, 0]


def turn_head(crop: np.ndarray, theta: float, nose: np.ndarray, radius: float = 100.0, bump: float = 30.0,
              width: float = 12.0) -> np.ndarray:
    """A synthetic head turn by ``theta`` (radians; positive moves the nose to the image's right) of an aligned
    crop: each row's pixels lie on a vertical cylinder of ``radius`` around the crop's midline plus a Gaussian
    nose bump at ``nose``; x' = x cos θ + depth sin θ, the nearest surface winning."""
    side = crop.shape[1]
    xs = np.arange(side) + 0.5 - side / 2
    fine = np.linspace(xs[0], xs[-1], 4 * side)
    out = np.empty_like(crop)
    for i in range(crop.shape[0]):
        depth = np.sqrt(np.maximum(radius**2 - fine**2, 0)) + bump * np.exp(
            -((fine + side / 2 - nose[0]) ** 2 + (i + 0.5 - nose[1]) ** 2) / (2 * width**2))
        moved = fine * math.cos(theta) + depth * math.sin(theta)
        moved = np.maximum.accumulate(moved) if theta >= 0 else np.minimum.accumulate(moved[::-1])[::-1]
        source = np.interp(xs, moved, fine)
        for c in range(3):
            out[i, :, c] = np.interp(source, xs, crop[i, :, c].astype(np.float64)).round()
    return out


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small convolutions: on a shared 2-core machine a second thread waits for a taken core
    (benchmarks/RESULTS.md, "CPU: threads when another program is busy")."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    try:
        return FaceDetector()
    except FaceWeightsMissing:
        pytest.skip("facenet-pytorch (its MTCNN weights) is not installed: pip install --no-deps facenet-pytorch")


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return skimage_data.astronaut()


@pytest.fixture(scope="module")
def astronaut(detector, photo):
    return align_face(detector, photo, RES, "astronaut")


def test_astronaut_landmarks_are_within_a_few_pixels_of_the_hand_placed_ones(astronaut):
    errors = np.linalg.norm(astronaut.face.landmarks - HAND_LANDMARKS, axis=1)
    assert errors.max() < LANDMARK_TOLERANCE, errors
    x0, y0, x1, y1 = astronaut.face.box
    assert (astronaut.face.landmarks >= [x0, y0]).all() and (astronaut.face.landmarks <= [x1, y1]).all()
    assert astronaut.face.score > 0.99


def test_astronaut_pose_is_near_frontal(astronaut):
    """Yaw within ±6° of frontal, pitch within 10° of level, the crop's roll within ±3° (measured: 1.4°, 90.1°,
    0.1°). The aligned crop puts the eyes where FFHQ's 256² crops have them (about x 96 and 160, y 122)."""
    yaw, pitch, roll = np.degrees(astronaut.pose.angles)
    assert abs(yaw) < 6 and abs(pitch - 90) < 10 and abs(roll) < 3, (yaw, pitch, roll)
    np.testing.assert_allclose(astronaut.landmarks[:2], [[96, 122], [160, 122]], atol=6)
    assert astronaut.image.shape == (RES, RES, 3) and astronaut.outside == 0


def test_flipping_the_photo_mirrors_the_landmarks_and_negates_yaw(detector, photo, astronaut):
    flipped = align_face(detector, photo[:, ::-1].copy(), RES)
    errors = np.linalg.norm(mirror(flipped.face.landmarks, photo.shape[1]) - astronaut.face.landmarks, axis=1)
    assert errors.max() < 3, errors  # measured 0.4–1.2
    yaw, yaw_flipped = math.degrees(astronaut.pose.angles[0]), math.degrees(flipped.pose.angles[0])
    assert abs(yaw + yaw_flipped) < 4, (yaw, yaw_flipped)  # measured 1.4° and −1.1°


def test_turning_the_head_moves_yaw_by_its_sign(detector, astronaut):
    """The aligned crop turned by ±20° (``turn_head``): yaw rises by more than 3° for a turn to the image's
    right and falls by more than 3° for the other (measured −9.9°, 2.4°, 9.9° for −20°, 0, 20°)."""
    nose = astronaut.landmarks[2]
    base = align_face(detector, astronaut.image, RES).pose.angles[0]
    right = align_face(detector, turn_head(astronaut.image, math.radians(20), nose), RES).pose.angles[0]
    left = align_face(detector, turn_head(astronaut.image, math.radians(-20), nose), RES).pose.angles[0]
    assert math.degrees(right - base) > 3 and math.degrees(left - base) < -3, np.degrees([left, base, right])


@pytest.mark.parametrize("change", ["rotate", "shrink"])
def test_alignment_undoes_in_plane_rotation_and_scale(detector, photo, astronaut, change):
    """The photo rotated by 25° or halved: the aligned crop's landmarks move by under 4 px (of 256) and the pose
    by under 6° (measured: 3.2 px, 1.7°; 2.4 px, 1.6°)."""
    image = Image.fromarray(photo)
    if change == "rotate":
        image = image.rotate(25, resample=Image.Resampling.BICUBIC, expand=True)
    else:
        image = image.resize((256, 256), Image.Resampling.LANCZOS)
    moved = align_face(detector, np.asarray(image), RES)
    assert np.linalg.norm(moved.landmarks - astronaut.landmarks, axis=1).max() < 4
    assert np.degrees(np.abs(moved.pose.angles - astronaut.pose.angles)).max() < 6


def test_the_largest_of_several_faces_is_taken_and_no_face_is_one_line(detector, photo):
    face = photo[40:296, 96:352]
    canvas = np.full((256, 384, 3), 128, np.uint8)
    canvas[:, :256] = face
    canvas[64:192, 256:] = np.asarray(Image.fromarray(face).resize((128, 128), Image.Resampling.LANCZOS))
    faces = detector.detect(canvas)
    assert len(faces) == 2 and faces[0].box[2] < 256 <= faces[1].box[0]
    assert detector.largest(canvas).box[0] == faces[0].box[0]
    with pytest.raises(NoFaceError, match=r"^no face found in blank\.png$"):
        detector.largest(np.full((64, 64, 3), 120, np.uint8), "blank.png")


# ----------------------------------------------------------------------------- the commands


@pytest.fixture(scope="module")
def photos(photo, tmp_path_factory):
    """A folder with the astronaut at 256² (as JPEG), a blank photo and a file that is no image."""
    root = tmp_path_factory.mktemp("photos")
    Image.fromarray(photo).resize((256, 256), Image.Resampling.LANCZOS).save(root / "astronaut.jpg", quality=95)
    Image.fromarray(np.full((96, 128, 3), 90, np.uint8)).save(root / "wall.png")
    (root / "notes.png").write_bytes(b"not an image")
    return root


def test_dataset_faces_writes_a_posed_dataset_and_a_report(detector, photos, tmp_path, capsys):
    out = tmp_path / "faces.zip"
    assert main(["dataset", "faces", str(photos), str(out), "--resolution", "64", "--min-face", "40"]) == 0
    printed = capsys.readouterr().out
    assert "1 faces at 64×64, 2 photos skipped" in printed
    assert "skipped notes.png: not an image file" in printed and "skipped wall.png: no face found" in printed
    assert "frustum: corners reach" in printed and printed.rstrip().endswith("OK")  # `dataset check`'s report
    with zipfile.ZipFile(out) as zf:
        assert sorted(zf.namelist()) == ["astronaut.png", "dataset.json"]
        meta = json.loads(zf.read("dataset.json"))
    assert meta["camera"] == {"fov": FFHQ_CAMERA.fov, "radius": FFHQ_CAMERA.radius}
    yaw, pitch, _ = meta["camera_angles"]["astronaut.png"]
    assert abs(yaw) < math.radians(6) and abs(pitch - math.pi / 2) < math.radians(10)
    ds = ImageDataset(out)
    assert ds.has_cameras and ds.load_image(0).shape == (3, 64, 64)
    report = tmp_path / "faces_report"
    skipped = (report / "skipped.txt").read_text().splitlines()
    assert skipped == ["notes.png: not an image file", "wall.png: no face found"]
    assert json.loads((report / "faces.json").read_text())[0]["source"] == "astronaut.jpg"
    assert Image.open(report / "poses.png").size == (1000, 360)
    assert main(["dataset", "faces", str(photos), str(out)]) == 2  # exists: --force to replace


def test_dataset_faces_without_any_face_is_an_error(detector, tmp_path, capsys):
    folder = tmp_path / "walls"
    folder.mkdir()
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(folder / "wall.png")
    assert main(["dataset", "faces", str(folder), str(tmp_path / "none.zip")]) == 2
    assert "no face found in any of the 1 images" in capsys.readouterr().err
    assert not (tmp_path / "none.zip").exists()


def test_invert_align_starts_at_the_face_pose(detector, photos, tmp_path, caplog):
    res = 16
    config = GeneratorConfig(z_dim=16, w_dim=16, image_resolution=res, patch_resolution=res, triplane_resolution=16,
                             triplane_channels=8, channel_base=256, channel_max=16, mlp_hidden=16,
                             render=RenderConfig(num_ray_steps=8))
    torch.manual_seed(0)
    checkpoint = save_checkpoint(tmp_path / "tiny.safetensors", ModelConfig(generator=config), Generator(config))
    args = ["invert", str(photos / "astronaut.jpg"), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out"),
            "--steps", "2", "--search-latents", "1", "--search-steps", "1", "--refine-steps", "1", "--frames", "1",
            "--format", "gif", "--mesh-resolution", "8", "--mesh-level", "0", "--no-perceptual", "--align"]
    with caplog.at_level("INFO"):
        assert main(args) == 0
    assert "face aligned" in caplog.text and "refined from the face's pose" in caplog.text
    latent = load_latent(tmp_path / "out" / "astronaut" / "latent.safetensors")
    yaw, pitch = latent.cameras.angles[0, :2].tolist()
    assert latent.metadata["camera_estimated"] and abs(yaw) < 0.2 and abs(pitch - math.pi / 2) < 0.25
    assert main([*args, "--fit", "center-crop"]) == 2


def test_without_the_weights_face_commands_say_how_to_install_them(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(face_nets, "find_spec", lambda name: None)
    with pytest.raises(FaceWeightsMissing):
        FaceDetector()
    (tmp_path / "photos").mkdir()
    assert main(["dataset", "faces", str(tmp_path / "photos"), str(tmp_path / "out.zip")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install --no-deps facenet-pytorch" in err
