"""Image datasets (docs/method.md §6): validation messages, mirroring, folder vs zip, labels, and the CLI."""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from epigraf.cameras.conventions import circular_mean
from epigraf.cameras.formats import angles_to_eg3d
from epigraf.cli import main
from epigraf.config import FFHQ_CAMERA, MEGASCANS_CAMERA
from epigraf.data import DatasetWarning, ImageDataset, validate_dataset
from epigraf.data.camera_check import check_camera

SIZE = 8


def make_images(folder: Path, n: int = 6, size: tuple[int, int] = (SIZE, SIZE), ext: str = "png",
                seed: int = 0) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = [f"img{i:02d}.{ext}" for i in range(n)]
    for name in names:
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(folder / name)
    return names


def poses(n: int, seed: int = 0) -> np.ndarray:
    """Zero-centred, frontal-ish angles [n, 3]."""
    rng = np.random.default_rng(seed)
    yaw = rng.uniform(-0.4, 0.4, n)
    return np.stack([yaw - yaw.mean(), rng.uniform(1.3, 1.8, n), np.zeros(n)], axis=1)


def write_meta(folder: Path, **fields: object) -> None:
    (folder / "dataset.json").write_text(json.dumps(fields))


def posed_dataset(folder: Path, n: int = 6, labels: dict | None = None) -> tuple[list[str], np.ndarray]:
    names = make_images(folder, n)
    angles = poses(n)
    meta: dict[str, object] = {"camera_angles": {name: a.tolist() for name, a in zip(names, angles, strict=True)}}
    if labels is not None:
        meta["labels"] = labels
    write_meta(folder, **meta)
    return names, angles


def zip_folder(folder: Path, out: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(out, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, prefix + path.relative_to(folder).as_posix())
    return out


def errors_of(path: Path, **kwargs: object) -> str:
    return "\n".join(validate_dataset(path, **kwargs).errors)


# --------------------------------------------------------------------------------------------------
# Validation: one clear message per problem
# --------------------------------------------------------------------------------------------------

def test_no_images(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="no images found"):
        ImageDataset(tmp_path)


def test_missing_path_and_non_zip_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dataset not found"):
        ImageDataset(tmp_path / "nothing")
    (tmp_path / "data.tar").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="neither a folder nor a zip"):
        ImageDataset(tmp_path / "data.tar")


def test_unreadable_image_is_named(tmp_path: Path) -> None:
    make_images(tmp_path, 3)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG garbage")
    assert "1 images cannot be read: 'broken.png'" in errors_of(tmp_path)


def test_truncated_image_is_found_by_decoding(tmp_path: Path) -> None:
    make_images(tmp_path, 2)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    Image.open(tmp_path / "t.png").close()  # the header alone is fine…
    assert "'t.png'" in errors_of(tmp_path, decode=True)  # …the pixel data is not


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_a_file_cut_short_is_found_without_decoding(tmp_path: Path, ext: str) -> None:
    """Headers plus each PNG/JPEG's end marker: a copy cut short is refused before training (it used to stop a
    run after its folder was made), and trailing bytes after a complete image are still accepted."""
    make_images(tmp_path, 2, size=(64, 64), ext=ext)
    pixels = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)  # the header is a small part
    Image.fromarray(pixels).save(tmp_path / f"t.{ext}")
    data = (tmp_path / f"t.{ext}").read_bytes()
    (tmp_path / f"t.{ext}").write_bytes(data + b"\0" * 16)
    assert errors_of(tmp_path) == ""
    (tmp_path / f"t.{ext}").write_bytes(data[: len(data) * 2 // 3])
    assert f"1 images cannot be read: 't.{ext}' (OSError: the file ends before its" in errors_of(tmp_path)


def test_non_square_images(tmp_path: Path) -> None:
    make_images(tmp_path, 2, size=(SIZE, SIZE + 2))
    assert "2 images are not square, e.g. 'img00.png' (8×10)" in errors_of(tmp_path)


def test_mixed_sizes(tmp_path: Path) -> None:
    make_images(tmp_path / "a", 3, size=(8, 8))
    make_images(tmp_path / "b", 1, size=(16, 16))
    assert "images have mixed sizes: 8×8 (3 images, e.g. 'a/img00.png'), 16×16 (1 images" in errors_of(tmp_path)


def test_images_without_poses_are_listed(tmp_path: Path) -> None:
    names = make_images(tmp_path, 6)
    write_meta(tmp_path, camera_angles={n: a.tolist() for n, a in zip(names[:2], poses(2), strict=True)})
    assert "4 of 6 images have no camera_angles entry, e.g. 'img02.png', 'img03.png', 'img04.png', … (4 in all)" \
        in errors_of(tmp_path)


def test_poses_without_images(tmp_path: Path) -> None:
    names = make_images(tmp_path, 2)
    angles = {n: a.tolist() for n, a in zip([*names, "gone.png"], poses(3), strict=True)}
    write_meta(tmp_path, camera_angles=angles)
    assert "1 camera_angles entries match no image, e.g. 'gone.png'" in errors_of(tmp_path)


def test_degrees(tmp_path: Path) -> None:
    names = make_images(tmp_path, 3)
    write_meta(tmp_path, camera_angles={n: [10.0 * i, 90.0, 0.0] for i, n in enumerate(names)})
    assert "camera angles look like degrees" in errors_of(tmp_path)


def test_pitch_outside_range(tmp_path: Path) -> None:
    names = make_images(tmp_path, 3)
    write_meta(tmp_path, camera_angles={n: [0.0, p, 0.0] for n, p in zip(names, [1.5, -0.1, 0.1], strict=True)})
    assert "1 of 3 poses have pitch outside (0, π) ('img01.png': -0.1)" in errors_of(tmp_path)


def test_malformed_pose_entry(tmp_path: Path) -> None:
    names = make_images(tmp_path, 2)
    write_meta(tmp_path, camera_angles={names[0]: [0.0, 1.5, 0.0], names[1]: [0.0, 1.5]})
    errors = errors_of(tmp_path)
    assert "1 camera_angles entries are not [yaw, pitch, roll]" in errors
    assert "have no camera_angles entry" not in errors  # the same problem is not reported twice


def test_yaw_not_zero_centred_warns_with_the_mean(tmp_path: Path) -> None:
    names = make_images(tmp_path, 4)
    write_meta(tmp_path, camera_angles={n: [0.6, 1.5, 0.0] for n in names})
    report = validate_dataset(tmp_path)
    assert report.ok
    assert any("yaw is not zero-centred: its circular mean is 0.6000 rad" in w for w in report.warnings)
    with pytest.warns(DatasetWarning, match="not zero-centred"):
        ImageDataset(tmp_path)


def test_labels_of_mixed_kinds(tmp_path: Path) -> None:
    names = make_images(tmp_path, 3)
    write_meta(tmp_path, labels={names[0]: 1, names[1]: [0.0, 1.0], names[2]: 0})
    assert "labels are of mixed kinds: 2 class indices" in errors_of(tmp_path)


def test_several_dataset_json(tmp_path: Path) -> None:
    make_images(tmp_path, 2)
    write_meta(tmp_path, labels=None)
    (tmp_path / "sub").mkdir()
    write_meta(tmp_path / "sub", labels=None)
    assert "found 2 dataset.json files" in errors_of(tmp_path)


def test_constructor_lists_every_error(tmp_path: Path) -> None:
    names = make_images(tmp_path, 3, size=(SIZE, SIZE + 1))
    write_meta(tmp_path, camera_angles={n: [0.0, 100.0, 0.0] for n in names})
    with pytest.raises(ValueError) as info:
        ImageDataset(tmp_path)
    assert "not square" in str(info.value) and "look like degrees" in str(info.value)


# --------------------------------------------------------------------------------------------------
# Items: mirroring, folder vs zip, labels, keys
# --------------------------------------------------------------------------------------------------

def test_items_and_mirroring(tmp_path: Path) -> None:
    names, angles = posed_dataset(tmp_path, 4)
    ds = ImageDataset(tmp_path, mirror=True)
    assert len(ds) == 8 and ds.num_images == 4 and ds.resolution == SIZE and ds.has_cameras and ds.c_dim == 0
    item = ds[1]
    assert item.image.dtype == np.uint8 and item.image.shape == (3, SIZE, SIZE)
    np.testing.assert_array_equal(item.image, np.asarray(Image.open(tmp_path / names[1])).transpose(2, 0, 1))
    np.testing.assert_allclose(item.angles, angles[1], atol=1e-6)
    flipped = ds[5]
    np.testing.assert_array_equal(flipped.image, item.image[:, :, ::-1])
    np.testing.assert_allclose(flipped.angles, [-angles[1, 0], angles[1, 1], angles[1, 2]], atol=1e-6)
    assert ds.mean_camera_pose[0] == pytest.approx(0.0, abs=1e-7)
    assert ds.mean_camera_pose[1] == pytest.approx(angles[:, 1].mean(), abs=1e-6)


def test_coverage_is_the_alpha_channel_mirrored_with_its_image(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 255, (3, SIZE, SIZE, 4), dtype=np.uint8)
    for i, pixels in enumerate(rgba):
        Image.fromarray(pixels, "RGBA").save(tmp_path / f"img{i:02d}.png")
    ds = ImageDataset(tmp_path, mirror=True, coverage=True)
    assert not ds.report.warnings  # the alpha channel is used, not dropped
    item, flipped = ds[1], ds[4]
    assert item.coverage.dtype == np.uint8 and item.coverage.shape == (1, SIZE, SIZE)
    np.testing.assert_array_equal(item.coverage[0], rgba[1, :, :, 3])
    np.testing.assert_array_equal(item.image, rgba[1, :, :, :3].transpose(2, 0, 1))
    np.testing.assert_array_equal(flipped.coverage, item.coverage[:, :, ::-1])
    with pytest.warns(DatasetWarning, match="3 images have an alpha channel, which is dropped"):
        plain = ImageDataset(tmp_path)
    assert plain[1].coverage.shape == (0, SIZE, SIZE)  # not asked for: no channel
    archive = ImageDataset(zip_folder(tmp_path, tmp_path.parent / "rgba.zip"), coverage=True)
    np.testing.assert_array_equal(archive[1].coverage, item.coverage)


def test_coverage_of_a_builtin_dataset_is_its_stored_mask(tmp_path: Path) -> None:
    names = make_images(tmp_path / "images" / "toy", 2)
    (tmp_path / "geometry" / "toy").mkdir(parents=True)
    masks = np.random.default_rng(1).integers(0, 255, (2, SIZE, SIZE), dtype=np.uint8)
    for name, mask in zip(names, masks, strict=True):
        np.savez_compressed(tmp_path / "geometry" / "toy" / f"{name[:-4]}.npz", depth=np.zeros((SIZE, SIZE)),
                            mask=mask)
    ds = ImageDataset(tmp_path, coverage=True)
    for i in range(2):
        np.testing.assert_array_equal(ds[i].coverage[0], masks[names.index(ds.names[i].split("/")[-1])])


def test_coverage_of_images_without_alpha_is_refused_up_front(tmp_path: Path) -> None:
    make_images(tmp_path, 3)
    Image.new("RGBA", (SIZE, SIZE)).save(tmp_path / "img01.png")
    with pytest.raises(ValueError, match=r"2 images have no alpha channel \(e.g. 'img00.png', 'img02.png'\): the "
                                         r"objects' coverage \(--d-alpha\) needs RGBA images, or a built-in dataset"):
        ImageDataset(tmp_path, coverage=True)
    (tmp_path / "geometry").mkdir()  # a built-in dataset whose masks are missing
    with pytest.raises(ValueError, match="3 images of this built-in dataset have no stored mask in geometry/"):
        ImageDataset(tmp_path, coverage=True)


def test_without_cameras_angles_are_nan(tmp_path: Path) -> None:
    make_images(tmp_path, 2)
    ds = ImageDataset(tmp_path)
    assert not ds.has_cameras and ds.mean_camera_pose is None
    assert np.isnan(ds[0].angles).all()


@pytest.mark.parametrize("prefix", ["", "top/"])
def test_zip_and_folder_give_identical_items(tmp_path: Path, prefix: str) -> None:
    posed_dataset(tmp_path / "data", 5, labels={f"img{i:02d}": i % 3 for i in range(5)})
    folder = ImageDataset(tmp_path / "data", mirror=True)
    archive = ImageDataset(zip_folder(tmp_path / "data", tmp_path / "data.zip", prefix), mirror=True)
    assert folder.names == archive.names
    for i in range(len(folder)):
        for a, b in zip(folder[i], archive[i], strict=True):
            np.testing.assert_array_equal(a, b)
    restored = pickle.loads(pickle.dumps(archive))  # DataLoader workers receive the dataset this way
    np.testing.assert_array_equal(restored[3].image, archive[3].image)


def test_class_labels_become_one_hot(tmp_path: Path) -> None:
    names, _ = posed_dataset(tmp_path, 4, labels={"img00.png": 2, "img01.png": 0, "./img02": 1, "img03.jpg": 2})
    ds = ImageDataset(tmp_path)
    assert ds.c_dim == 3 and ds.label_kind == "class"
    np.testing.assert_array_equal(ds.labels, np.eye(3, dtype=np.float32)[[2, 0, 1, 2]])
    np.testing.assert_array_equal(ds[0].label, [0, 0, 1])


def test_vector_labels_and_stored_camera(tmp_path: Path) -> None:
    names = make_images(tmp_path, 2)
    write_meta(tmp_path, labels={n: [0.5, float(i)] for i, n in enumerate(names)}, camera={"fov": 13.0, "radius": 2.7})
    ds = ImageDataset(tmp_path)
    assert ds.c_dim == 2 and ds.label_kind == "vector" and ds.camera == {"fov": 13.0, "radius": 2.7}
    np.testing.assert_array_equal(ds[1].label, [0.5, 1.0])


def test_keys_match_without_extension_and_root_prefix(tmp_path: Path) -> None:
    make_images(tmp_path / "root" / "sub", 2)
    angles = poses(2)
    keys = ["root/sub/img00.jpg", "sub/img01"]  # a root prefix, another extension, no extension
    write_meta(tmp_path / "root", camera_angles={k: a.tolist() for k, a in zip(keys, angles, strict=True)})
    ds = ImageDataset(tmp_path / "root")
    assert ds.names == ["sub/img00.png", "sub/img01.png"]
    np.testing.assert_allclose(ds.camera_angles, angles, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# Frustum check (docs/method.md §11.7)
# --------------------------------------------------------------------------------------------------

def test_frustum_extent_matches_the_spec() -> None:
    ffhq = check_camera(dataclasses.replace(FFHQ_CAMERA, distribution="spherical_uniform"))
    assert ffhq.extent == pytest.approx(0.1968, abs=5e-4) and not ffhq.errors
    megascans = check_camera(MEGASCANS_CAMERA)
    assert megascans.extent == pytest.approx(0.4740, abs=5e-4) and not megascans.errors
    small = check_camera(dataclasses.replace(MEGASCANS_CAMERA, cube_scale=0.3))
    assert "the camera frustum leaves the tri-plane cube" in small.errors[0]
    far = check_camera(dataclasses.replace(FFHQ_CAMERA, radius=2.7), poses(3))
    assert any("outside the ray range [0.88, 1.12]" in e for e in far.errors)


# --------------------------------------------------------------------------------------------------
# CLI end to end
# --------------------------------------------------------------------------------------------------

def test_cli_convert_check_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    names = make_images(tmp_path / "raw", 6, size=(12, 10), ext="jpg")
    angles = poses(6) + [0.5, 0.0, 0.0]  # not zero-centred on purpose
    labels = angles_to_eg3d(angles, 2.7, 13.5)
    entries = [[n, v.tolist()] for n, v in zip(names, labels, strict=True)]
    (tmp_path / "eg3d.json").write_text(json.dumps({"labels": entries}))
    out = tmp_path / "ours.zip"

    assert main(["dataset", "convert", str(tmp_path / "raw"), str(out), "--poses", str(tmp_path / "eg3d.json"),
                 "--format", "eg3d"]) == 2
    assert "not square" in capsys.readouterr().err

    assert main(["dataset", "convert", str(tmp_path / "raw"), str(out), "--poses", str(tmp_path / "eg3d.json"),
                 "--format", "eg3d", "--crop", "--resolution", "8", "--zero-centre-yaw"]) == 0
    text = capsys.readouterr().out
    assert "6 images at 8×8" in text and "fov: 13.5000°" in text and "radius: 2.7000" in text
    meta = json.loads(zipfile.ZipFile(out).read("dataset.json"))
    assert meta["camera"] == pytest.approx({"fov": 13.5, "radius": 2.7})
    got = np.array([meta["camera_angles"][n.replace(".jpg", ".png")] for n in names])
    np.testing.assert_allclose(got[:, 0], angles[:, 0] - circular_mean(angles[:, 0])[0], atol=1e-6)
    np.testing.assert_allclose(got[:, 1], angles[:, 1], atol=1e-6)

    assert main(["dataset", "check", str(out), "--fov", "13.5"]) == 0
    text = capsys.readouterr().out
    assert "no errors" in text and "inside the cube" in text and text.rstrip().endswith("OK")
    assert main(["dataset", "check", str(out), "--cube-scale", "0.1"]) == 1
    text = capsys.readouterr().out
    assert "leaves the tri-plane cube" in text and "poses imply fov 13.500°" in text

    assert main(["dataset", "info", str(out), "--out", str(tmp_path / "info"), "--samples", "4"]) == 0
    assert "images: 6 at 8×8" in capsys.readouterr().out
    info = json.loads((tmp_path / "info" / "info.json").read_text())
    assert info["images"] == 6 and info["poses"]["yaw"]["circular_mean"] == pytest.approx(0.0, abs=1e-6)
    assert Image.open(tmp_path / "info" / "cameras.png").size[0] > 500
    assert Image.open(tmp_path / "info" / "samples.png").size[1] > 0


def test_cli_check_fails_on_a_broken_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    names = make_images(tmp_path, 3)
    write_meta(tmp_path, camera_angles={n: [0.0, 95.0, 0.0] for n in names})
    assert main(["dataset", "check", str(tmp_path)]) == 1
    text = capsys.readouterr().out
    assert "look like degrees" in text and "FAILED" in text


def test_cli_info_histogram_and_alpha_convert(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "raw").mkdir()
    rgba = np.zeros((SIZE, SIZE, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[: SIZE // 2, :, 3] = 255  # top half opaque red, bottom half transparent
    for i in range(3):
        Image.fromarray(rgba).save(tmp_path / "raw" / f"{i}.png")
    write_meta(tmp_path / "raw", labels={"0": 0, "1": 1, "2": 1})
    assert main(["dataset", "convert", str(tmp_path / "raw"), str(tmp_path / "out.zip")]) == 0
    capsys.readouterr()
    ds = ImageDataset(tmp_path / "out.zip")
    image = ds[0].image
    assert (image[:, 0, 0] == [255, 0, 0]).all() and (image[:, -1, 0] == [255, 255, 255]).all()
    assert main(["dataset", "info", str(tmp_path / "out.zip"), "--out", str(tmp_path / "info")]) == 0
    text = capsys.readouterr().out
    assert "2 classes" in text and "cameras: none" in text
    assert not (tmp_path / "info" / "cameras.png").exists()
    assert math.isclose(json.loads((tmp_path / "info" / "info.json").read_text())["label_histogram"]["1"], 2)


def test_cli_check_takes_the_camera_of_the_presets_the_dataset_matches(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """The built-in data stores the builtin preset's fov 30° and radius 1: without --preset, check uses that
    camera rather than FFHQ's 12° (and so does not suggest --fov 30)."""
    names = make_images(tmp_path, 3)
    write_meta(tmp_path, camera={"fov": 30.0, "radius": 1.0},
               camera_angles={n.removesuffix(".png"): pose.tolist() for n, pose in zip(names, poses(3), strict=True)})
    assert main(["dataset", "check", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "camera (preset plants256 / food256 / builtin, whose fov and radius the dataset stores): fov 30.0°" in text
    assert "--fov" not in text and text.rstrip().endswith("OK")


def test_cli_check_without_a_matching_preset_says_it_uses_the_ffhq_camera(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    names = make_images(tmp_path, 3)
    write_meta(tmp_path, camera={"fov": 20.0, "radius": 1.0},
               camera_angles={n.removesuffix(".png"): pose.tolist() for n, pose in zip(names, poses(3), strict=True)})
    main(["dataset", "check", str(tmp_path)])
    text = capsys.readouterr().out
    assert "camera (defaults (the FFHQ camera; --preset NAME checks a preset's)): fov 12.0°" in text
    assert "use --fov 20.000" in text


def test_cli_check_and_train_agree_on_labels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The built-in toys (12 labels) with --preset builtin: check once warned that the preset has 0 classes, while
    `epigraf train` trains that pairing class-conditionally. Both now ask train.options.label_dim."""
    from epigraf.config import preset
    from epigraf.train.data_feed import model_config_for
    from epigraf.train.options import TrainOptions, label_dim

    names = make_images(tmp_path, 3)
    write_meta(tmp_path, labels={n: i for i, n in enumerate(names)},
               camera_angles={n.removesuffix(".png"): pose.tolist() for n, pose in zip(names, poses(3), strict=True)})
    main(["dataset", "check", str(tmp_path), "--preset", "builtin"])
    text = capsys.readouterr().out
    assert "labels: `epigraf train --preset builtin` trains class-conditional on the dataset's 3-dim labels" in text
    assert "classes but" not in text and "label error" not in text
    base = dataclasses.replace(preset("builtin"), generator=dataclasses.replace(
        preset("builtin").generator, image_resolution=SIZE))
    trained = model_config_for(TrainOptions(), ImageDataset(tmp_path), base)
    assert trained.generator.c_dim == trained.discriminator.c_dim == 3
    main(["dataset", "check", str(tmp_path), "--preset", "builtin", "--no-use-labels"])
    assert "trains unconditional (--no-use-labels)" in capsys.readouterr().out
    assert label_dim("p", 0, 3, use_labels=False) == 0
    with pytest.raises(ValueError, match="preset 'p' is conditional on 4 classes, the dataset has 3"):
        label_dim("p", 4, 3)
