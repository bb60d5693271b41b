"""What the metrics read from a dataset, and how they draw cameras and labels for fake images
(docs/method.md §6.4, §7.1).

The dataset is anything shaped like :class:`epigraf.data.ImageDataset` (see :class:`MetricDataset`).

Camera modes for fakes:

* ``"dataset"``: the (yaw, pitch, roll) of a uniformly drawn dataset image — the original's protocol for
  datasets with per-image poses ("dataset cameras"). Needs a dataset with camera angles.
* ``"random"``: drawn from the model's configured camera distribution, independently of the images
  ("random cameras"): ``spherical_uniform`` → uniform on the sphere; ``normal`` and ``custom`` → the
  config's Gaussian (yaw ~ N(yaw_mean, yaw_std²), pitch ~ N(pitch_mean, pitch_std²); for ``custom`` —
  empirical poses — this is the Gaussian the original's plain ``ffhq`` config used, σ_yaw 0.3, pitch
  π/2 ± 0.155 by default).

Labels of a conditional model always come from a uniformly drawn dataset image (the same image as the
camera in ``"dataset"`` mode); without a dataset, classes are drawn uniformly.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from epigraf.cameras import sample_normal, sample_spherical_uniform
from epigraf.config import CameraConfig

__all__ = [
    "CAMERA_MODES",
    "MetricDataset",
    "dataset_camera_angles",
    "images_to_uint8",
    "num_real_images",
    "random_camera_angles",
    "real_images",
    "sample_conditions",
]

CAMERA_MODES = ("dataset", "random")


class MetricDataset(Protocol):
    """What the metrics need from a dataset (``ImageDataset`` fits).

    Required: ``resolution`` (int), ``len(ds)`` and ``ds[i]`` → (uint8 image [3, R, R], float angles [3] (yaw,
    pitch, roll; NaN without cameras), float label [c_dim]). Optional, used when present: ``num_images``
    (items < num_images are the un-mirrored images), ``camera_angles`` [len, 3] and ``labels`` [len, c_dim]
    arrays (avoid decoding images), ``has_cameras``, ``path`` (enables the real-statistics cache).
    """

    resolution: int

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> Any: ...


def num_real_images(dataset: MetricDataset) -> int:
    """Number of real images used by the *_full metrics: every image once, no x-flipped copies."""
    return int(getattr(dataset, "num_images", len(dataset)))


def real_images(dataset: MetricDataset, batch_size: int) -> Iterator[Tensor]:
    """Every real image once (no flips), as uint8 batches [b, 3, R, R]."""
    n = num_real_images(dataset)
    for start in range(0, n, batch_size):
        batch = [np.asarray(dataset[i][0]) for i in range(start, min(start + batch_size, n))]
        images = torch.from_numpy(np.stack(batch))
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"dataset images must be uint8 [3, R, R], got {images.dtype} {list(images.shape[1:])}")
        yield images


def dataset_camera_angles(dataset: MetricDataset | None) -> np.ndarray | None:
    """float [len, 3] angles of every item, or None when the dataset has no camera angles."""
    if dataset is None or getattr(dataset, "has_cameras", True) is False:
        return None
    angles = getattr(dataset, "camera_angles", None)
    if angles is None:
        angles = np.stack([np.asarray(dataset[i][1], dtype=np.float32) for i in range(len(dataset))])
    angles = np.asarray(angles, dtype=np.float32)
    if angles.ndim != 2 or angles.shape[1] != 3 or not np.isfinite(angles).all():
        return None
    return angles


def _dataset_labels(dataset: MetricDataset) -> np.ndarray:
    labels = getattr(dataset, "labels", None)
    if labels is None:
        labels = np.stack([np.asarray(dataset[i][2], dtype=np.float32).reshape(-1) for i in range(len(dataset))])
    return np.asarray(labels, dtype=np.float32)


def random_camera_angles(camera: CameraConfig, n: int, generator: torch.Generator | None = None) -> Tensor:
    """[n, 3] angles from the configured distribution (see the module docstring)."""
    if camera.distribution == "spherical_uniform":
        return sample_spherical_uniform(n, generator=generator)
    if camera.distribution in ("normal", "custom"):
        return sample_normal(n, camera.yaw_mean, camera.yaw_std, camera.pitch_mean, camera.pitch_std,
                             generator=generator)
    raise ValueError(f"unknown camera distribution {camera.distribution!r}")


def sample_conditions(
    camera: CameraConfig,
    c_dim: int,
    dataset: MetricDataset | None,
    n: int,
    camera_mode: str,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor | None]:
    """Cameras [n, 3] and labels [n, c_dim] (None when c_dim = 0) for n fakes, on the CPU."""
    if camera_mode not in CAMERA_MODES:
        raise ValueError(f"unknown camera mode {camera_mode!r}; choose from {CAMERA_MODES}")
    size = 0 if dataset is None else len(dataset)
    index = torch.randint(size, (n,), generator=generator) if size > 0 else None
    if camera_mode == "dataset":
        angles_all = dataset_camera_angles(dataset)
        if angles_all is None or index is None:
            raise ValueError("dataset cameras need a dataset with camera angles (dataset.json 'camera_angles'); "
                             "use random cameras instead")
        angles = torch.from_numpy(angles_all[index.numpy()])
    else:
        angles = random_camera_angles(camera, n, generator)
    if c_dim == 0:
        return angles, None
    if index is None:
        return angles, torch.nn.functional.one_hot(torch.randint(c_dim, (n,), generator=generator), c_dim).float()
    labels = _dataset_labels(dataset)
    if labels.shape[1] != c_dim:
        raise ValueError(f"the model is conditional on {c_dim} classes but the dataset has {labels.shape[1]}-d labels")
    return angles, torch.from_numpy(labels[index.numpy()])


def images_to_uint8(images: Tensor) -> Tensor:
    """Float [B, 3, H, W] in [−1, 1] → uint8 [B, 3, H, W]: x·127.5 + 128, clamped, rounded down (as
    ``epigraf.export.images.to_uint8`` and the original), on the same device."""
    return (images * 127.5 + 128).clamp(0, 255).to(torch.uint8)
