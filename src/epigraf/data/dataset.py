"""``ImageDataset``: square images from a folder or zip with optional camera angles and labels (docs/method.md §6).

Items are numpy arrays (the default DataLoader collate turns them into tensors): a uint8 image
[3, R, R], float32 angles [3] (yaw, pitch, roll), a float32 label [c_dim] and the object's uint8 coverage of each
pixel [1, R, R] (with ``coverage=True``; else [0, R, R]). ``mirror=True`` appends a horizontally flipped copy of
every image with its yaw negated (docs/method.md §6.2): item i + N is item i flipped.
"""

from __future__ import annotations

import os
import warnings
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from epigraf.data.sources import open_image
from epigraf.data.validate import Report, builtin_geometry_root, geometry_file, validate_dataset


class DatasetWarning(UserWarning):
    """A dataset problem that does not stop training (e.g. yaw not zero-centred)."""


class Item(NamedTuple):
    """One dataset item. image: uint8 [3, R, R]; angles: float32 [3] (NaN when the dataset has no
    cameras, so that an accidental use fails loudly); label: float32 [c_dim] (one-hot for classes); coverage:
    uint8 [1, R, R], 255 where the object covers the pixel, or [0, R, R] when not asked for (so that a batch of
    images and coverages concatenates the same way either way)."""

    image: np.ndarray
    angles: np.ndarray
    label: np.ndarray
    coverage: np.ndarray


class ImageDataset(torch.utils.data.Dataset):
    """A validated image dataset.

    path: a folder or zip of square images of one size, with an optional ``dataset.json``.
    mirror: also yield flipped copies with negated yaw (doubles the length).
    coverage: also yield each image's coverage: its alpha channel, or for a built-in dataset the mask stored
        beside it (``epigraf.data.validate.geometry_file``); an image without either is a validation error.
    decode_check: decode every image during validation (finds truncated files up front; slower).
    Raises ValueError listing every problem found (see ``epigraf.data.validate``); warnings are issued
    as ``DatasetWarning``.
    """

    def __init__(self, path: str | os.PathLike, *, mirror: bool = False, coverage: bool = False,
                 decode_check: bool = False, yaw_tolerance: float = 0.1) -> None:
        self.report: Report = validate_dataset(path, decode=decode_check, yaw_tolerance=yaw_tolerance,
                                               coverage=coverage)
        self.report.raise_for_errors()
        for message in self.report.warnings:
            warnings.warn(f"{self.report.path}: {message}", DatasetWarning, stacklevel=2)
        index = self.report.index
        assert index is not None  # set by validate_dataset whenever there are no errors
        self.path = os.fspath(path)
        self.mirror = mirror
        self.names: list[str] = index.names
        self.resolution: int = index.resolution
        self.camera: dict[str, float] | None = index.camera
        self.label_kind: str | None = index.label_kind
        self.has_cameras: bool = index.angles is not None
        self._source = index.source
        n = len(self.names)
        angles = np.full((n, 3), np.nan, dtype=np.float32) if index.angles is None else index.angles.astype(np.float32)
        labels = np.zeros((n, 0), dtype=np.float32) if index.labels is None else index.labels
        if mirror:
            flipped = angles.copy()
            flipped[:, 0] = -flipped[:, 0]
            angles = np.concatenate([angles, flipped])
            labels = np.concatenate([labels, labels])
        self._angles = angles
        self._labels = labels
        self.with_coverage = coverage
        self._geometry_root = builtin_geometry_root(self._source)

    @property
    def num_images(self) -> int:
        """Number of image files (without mirrored copies)."""
        return len(self.names)

    @property
    def c_dim(self) -> int:
        return self._labels.shape[1]

    @property
    def camera_angles(self) -> np.ndarray:
        """float32 [len, 3] angles of every item (mirrored copies included), without decoding images."""
        return self._angles

    @property
    def labels(self) -> np.ndarray:
        """float32 [len, c_dim] labels of every item (mirrored copies included)."""
        return self._labels

    @property
    def mean_camera_pose(self) -> tuple[float, float, float] | None:
        """Mean (yaw, pitch, roll) over all items, mirrored copies included; None without cameras."""
        if not self.has_cameras:
            return None
        mean = self._angles.astype(np.float64).mean(axis=0)
        return float(mean[0]), float(mean[1]), float(mean[2])

    def __len__(self) -> int:
        return len(self._angles)

    def __getitem__(self, i: int) -> Item:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a dataset of {len(self)} items")
        i = i % len(self)
        n = self.num_images
        image = self.load_image(i % n)
        r = self.resolution
        coverage = self.load_coverage(i % n)[None] if self.with_coverage else np.zeros((0, r, r), np.uint8)
        if i >= n:
            image, coverage = image[:, :, ::-1].copy(), coverage[:, :, ::-1].copy()
        return Item(image, self._angles[i].copy(), self._labels[i].copy(), coverage)

    def load_image(self, j: int) -> np.ndarray:
        """Decode image file j (not mirrored) → uint8 [3, R, R]."""
        return self._decode(j, lambda im: im.convert("RGB")).transpose(2, 0, 1).copy()

    def load_coverage(self, j: int) -> np.ndarray:
        """The coverage of image j (not mirrored) → uint8 [R, R]: the built-in dataset's stored mask, else the
        image's alpha channel."""
        if self._geometry_root is None:
            return self._decode(j, lambda im: im.convert("RGBA").getchannel("A")).copy()
        name = self.names[j]
        path = geometry_file(self._geometry_root, name)
        try:
            with np.load(path) as arrays:
                return arrays["mask"]
        except (OSError, KeyError, ValueError) as err:
            raise ValueError(f"cannot read the coverage of {name!r} ({path}): {err}") from err

    def _decode(self, j: int, convert) -> np.ndarray:
        """``convert`` applied to image file j → uint8 [R, R, …], its size checked."""
        name = self.names[j]
        try:
            with open_image(self._source, name) as im:
                pixels = np.asarray(convert(im))
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            raise ValueError(f"cannot decode image {name!r} in {self.path}: {err}") from err
        if pixels.shape[:2] != (self.resolution, self.resolution):
            raise ValueError(f"image {name!r} in {self.path} is {pixels.shape[1]}×{pixels.shape[0]}, expected "
                             f"{self.resolution}×{self.resolution} (was it changed after validation?)")
        return pixels
