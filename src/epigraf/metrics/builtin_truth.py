"""The truth of a built-in dataset for the geometry metric (``epigraf.metrics.geometry``): per class, the views
the protocol uses with their true depth and coverage (``data.builtin.load_geometry``), the dataset's camera, and
the toy's mesh in the world frame (``data.builtin.object_mesh`` with the manifest's object radius).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from epigraf.cameras import Cameras
from epigraf.data import builtin
from epigraf.metrics.shapes import TriangleMesh, occupancy_grid, sample_surface

__all__ = ["ClassTruth", "load_builtin_truth", "seen_radius"]

# The protocol's views per class (``GeometryProtocol.views_per_class``).
DEFAULT_VIEWS = 8


def seen_radius(fov: float, radius: float, near: float, far: float) -> float:
    """Radius of the ball about the origin that every look-at-origin camera at distance ``radius`` with full
    field of view ``fov`` (degrees) sees whole, inside its ray interval [near, far] and its image."""
    return min(far - radius, radius - near, radius * math.sin(math.radians(fov) / 2))


@dataclass
class ClassTruth:
    """One class of a built-in dataset: its object, the protocol's views and the object's true mesh.

    angles [V, 3]; fov (degrees) and radius: the dataset's camera; depth [V, R, R] (distance along the ray, +inf
    off the object); mask [V, R, R] (coverage). Occupancy grids and surface samples are computed on first use
    and kept.
    """

    name: str
    label: int | None
    keys: list[str]
    angles: Tensor
    fov: float
    radius: float
    depth: Tensor
    mask: Tensor
    mesh: TriangleMesh
    _cache: dict[Any, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def cameras(self) -> Cameras:
        return Cameras.from_angles(self.angles, self.fov, self.radius)

    def occupancy(self, axis: np.ndarray) -> np.ndarray:
        key = ("occupancy", len(axis), float(axis[0]), float(axis[-1]))
        if key not in self._cache:
            self._cache[key] = occupancy_grid(self.mesh, axis)
        return self._cache[key]

    def surface_samples(self, n: int, seed: int) -> np.ndarray:
        key = ("samples", n, seed)
        if key not in self._cache:
            self._cache[key] = sample_surface(self.mesh, n, seed)
        return self._cache[key]


def _mesh_object(name: str):
    extras = {e[0]: e for e in builtin.EXTRA_MESHES}
    if name in extras:
        return builtin.MeshObject(*extras[name])
    for obj in builtin.catalogue():
        if obj.name == name:
            return obj
    raise ValueError(f"the built-in catalogue has no object {name!r}")


def load_builtin_truth(root: str | Path, views_per_class: int = DEFAULT_VIEWS,
                       classes: Sequence[int] | None = None) -> list[ClassTruth]:
    """The truth of a built-in dataset (``epigraf dataset builtin``), one ``ClassTruth`` per class.

    A labelled dataset (the named subsets) gives one per class in label order (``classes``: a subset of labels);
    an unlabelled one must hold one object (e.g. ``--num-objects 1``) and gives it with label None. The meshes
    are read from pybullet's data (the ``builtin`` extra).
    """
    root = Path(root).expanduser()
    manifest = builtin.read_manifest(root)
    if manifest is None or not (root / "geometry").is_dir():
        raise ValueError(f"{root} is not a built-in dataset with true geometry (no manifest.json or geometry/): "
                         "the geometry metric needs one (`epigraf dataset builtin`)")
    meta = json.loads((root / "dataset.json").read_text())
    names = [o["name"] for o in manifest["objects"]]
    labelled = manifest.get("classes") is not None
    if not labelled and len(names) != 1:
        raise ValueError(f"{root} holds {len(names)} unlabelled objects: the geometry metric measures a class per "
                         "object, so it needs a labelled subset or a one-object dataset")
    radius = float(manifest["params"]["object_radius"])
    wanted = range(len(names)) if classes is None else classes
    truths = []
    for label in wanted:
        if not 0 <= label < len(names):
            raise ValueError(f"class {label} is not in [0, {len(names)})")
        name = names[label]
        keys = sorted(k for k in meta["camera_angles"] if k.split("/")[1] == name)[:views_per_class]
        if labelled and any(meta["labels"][k] != label for k in keys):
            raise ValueError(f"{root}: the images of {name} are not labelled {label}")
        arrays = [builtin.load_geometry(root, k) for k in keys]
        vertices, faces = builtin.object_mesh(_mesh_object(name), radius)
        truths.append(ClassTruth(
            name=name, label=label if labelled else None, keys=keys,
            angles=torch.tensor([meta["camera_angles"][k] for k in keys], dtype=torch.float32),
            fov=float(meta["camera"]["fov"]), radius=float(meta["camera"]["radius"]),
            depth=torch.from_numpy(np.stack([d for d, _ in arrays])),
            mask=torch.from_numpy(np.stack([m for _, m in arrays])), mesh=TriangleMesh(vertices, faces)))
    return truths
