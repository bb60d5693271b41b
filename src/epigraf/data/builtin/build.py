"""Building the built-in dataset into a folder (by default in the cache) and reusing a finished build.

Each object of the subset (``catalogue``) is seen from ``views_per_object`` cameras uniform on the sphere (the
``spherical_uniform`` distribution of docs/method.md §6.3) at the ``builtin`` preset's fov and radius, looking at
the origin, and rendered by ``render``.

Output folder (a dataset for ``ImageDataset``; keys are paths without extension, docs/method.md §6.1)::

    dataset.json                 {"camera": {"fov", "radius"},
                                  "camera_angles": {"images/<object>/<view>": [yaw, pitch, 0]},
                                  "labels": {"images/<object>/<view>": class}}   (named subsets only)
    images/<object>/<view>.png   uint8 RGB, resolution²
    geometry/<object>/<view>.npz "depth": float16 resolution², distance from the camera centre along
                                 the pixel's unit ray (our depth, docs/method.md §2.2/§2.5) averaged over the
                                 covered samples, +inf where the object does not cover the pixel;
                                 "mask": uint8 resolution², coverage of the pixel by the object, 0–255
    manifest.json                build parameters, objects, file count and a content hash

``load_geometry`` reads the depth and mask of an image. They are not PNGs because every image file
under a dataset root is a training image, and one compressed archive per image keeps the cache small
(about 2 kB per image at 64², against 12 kB for raw arrays).

Cost: the time a build takes and the space it fills are measurements, which change with the machine and
pybullet, so they are kept in benchmarks/RESULTS.md ("CPU: building the built-in dataset"), not here. The
output is deterministic: the same arguments, pybullet, Pillow and zlib give byte-identical files whatever
``workers`` is, and each object's cameras depend only on the seed and the object's name.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import multiprocessing
import os
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from epigraf.cameras import cam2world_matrices, sample_spherical_uniform
from epigraf.config import preset
from epigraf.data.builtin.catalogue import (
    DEFAULT_SUBSET,
    SUBSETS,
    MeshObject,
    _check_subset,
    object_radius,
    pybullet_data_path,
    subset_objects,
)
from epigraf.data.builtin.render import SUPERSAMPLING, RenderTask, _write, render_object
from epigraf.data.validate import geometry_file
from epigraf.files import cache_dir

log = logging.getLogger(__name__)

VERSION = "v1"
DEFAULT_RESOLUTION = 64
# Views per object by subset: 256 of each toy (3,072 images, enough cameras to pin down each shape), 12 of
# each of the 1,049 objects of ``all`` (12,588 images).
DEFAULT_VIEWS = {"toys": 256, "all": 12}


@dataclass(frozen=True)
class BuildParams:
    """What determines the output; stored in the manifest and compared to decide whether a cache is current."""

    version: str
    resolution: int
    subset: str
    num_objects: int | None  # None: all of the subset
    views_per_object: int
    seed: int
    supersampling: int
    fov: float
    radius: float
    near: float
    far: float
    object_radius: float
    labels: bool  # class labels, one per object: for the named subsets
    pybullet: str | None  # None: not installed here


def _pybullet_version() -> str | None:
    try:
        return importlib.metadata.version("pybullet")
    except importlib.metadata.PackageNotFoundError:
        return None


def cache_root() -> Path:
    """epigraf's cache (:func:`epigraf.files.cache_dir`: ``$EPIGRAF_CACHE``, else ``~/.cache/epigraf``)."""
    return cache_dir()


def default_dir(resolution: int = DEFAULT_RESOLUTION, subset: str = DEFAULT_SUBSET, num_objects: int | None = None,
                views_per_object: int | None = None, seed: int = 0) -> Path:
    """``<cache>/builtin-<version>-<subset>-<resolution>``; non-default sizes or seeds get a suffix of their own."""
    views = _views(subset, views_per_object)
    name = f"builtin-{VERSION}-{subset}-{resolution}"
    if (num_objects, views, seed) != (None, DEFAULT_VIEWS[subset], 0):
        name += f"-n{num_objects or 'all'}-v{views}-s{seed}"
    return cache_root() / name


def _views(subset: str, views_per_object: int | None) -> int:
    """The views per object asked for, else the subset's default."""
    _check_subset(subset)
    return DEFAULT_VIEWS[subset] if views_per_object is None else views_per_object


def build_builtin_dataset(out_dir: str | os.PathLike | None = None, resolution: int = DEFAULT_RESOLUTION,
                          subset: str = DEFAULT_SUBSET, num_objects: int | None = None,
                          views_per_object: int | None = None, seed: int = 0,
                          workers: int | None = None, force: bool = False, progress: bool = False) -> Path:
    """Render the built-in dataset (module docstring) into ``out_dir`` and return that folder.

    out_dir: default ``default_dir(...)`` in the cache. subset: a key of ``SUBSETS`` (default the toys).
    num_objects: the first objects of the subset (default all). views_per_object: default the subset's
    (``DEFAULT_VIEWS``). workers: processes rendering in parallel (default: the usable CPUs; 1 renders in this
    process). force: rebuild even when ``out_dir`` already holds this build. progress: a progress bar.
    A complete build with the same parameters is reused as it is (also where pybullet is not installed,
    e.g. a build copied to a machine without it); otherwise the dataset is built in a temporary sibling
    folder and renamed into place, so ``out_dir`` is never seen half-written.
    """
    if resolution < 4:
        raise ValueError(f"resolution must be at least 4, got {resolution}")
    views_per_object = _views(subset, views_per_object)
    if views_per_object < 1:
        raise ValueError(f"views_per_object must be at least 1, got {views_per_object}")
    out = Path(out_dir) if out_dir is not None else default_dir(resolution, subset, num_objects, views_per_object, seed)
    camera = preset("builtin").generator.camera
    params = BuildParams(
        version=VERSION, resolution=resolution, subset=subset, num_objects=num_objects,
        views_per_object=views_per_object,
        seed=seed, supersampling=SUPERSAMPLING, fov=camera.fov, radius=camera.radius, near=camera.ray_start,
        far=camera.ray_end, object_radius=object_radius(camera.fov, camera.radius, camera.ray_start, camera.ray_end),
        labels=SUBSETS[subset] is not None, pybullet=_pybullet_version(),
    )
    if not force and is_complete(out, params):
        log.info("built-in dataset %s is up to date", out)
        return out
    data_path = pybullet_data_path()
    objects = subset_objects(subset, data_path)
    if num_objects is not None:
        if not 1 <= num_objects <= len(objects):
            raise ValueError(f"num_objects must be in [1, {len(objects)}], got {num_objects}")
        objects = objects[:num_objects]
    log.info("rendering the built-in dataset: %d objects × %d views at %d² into %s",
             len(objects), views_per_object, resolution, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tasks, angles = _tasks(tmp, data_path, objects, params)
        hashes = _render_all(tasks, workers, progress)
        metadata = {"camera": {"fov": params.fov, "radius": params.radius}, "camera_angles": angles}
        if params.labels:
            classes = {o.name: i for i, o in enumerate(objects)}
            metadata["labels"] = {key: classes[key.split("/")[1]] for key in angles}
        data = json.dumps(metadata, indent=1, sort_keys=True).encode()
        _write(tmp / "dataset.json", data)
        hashes["dataset.json"] = hashlib.sha256(data).hexdigest()
        manifest = {
            "params": asdict(params),
            "objects": [{"name": o.name, "source": o.path, "textured": o.textured} for o in objects],
            "classes": [o.name for o in objects] if params.labels else None,
            "num_images": len(angles),
            "content_sha256": content_hash(hashes),
        }
        _write(tmp / "manifest.json", json.dumps(manifest, indent=1).encode())
        _install(tmp, out, params, force)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _tasks(root: Path, data_path: Path, objects: list[MeshObject],
           params: BuildParams) -> tuple[list[RenderTask], dict[str, list[float]]]:
    """One task per object with its cameras, and the camera angles of every image key."""
    tasks, angles = [], {}
    views = tuple(f"{v:03d}" for v in range(params.views_per_object))
    for obj in objects:
        obj_angles = object_cameras(obj.name, params.views_per_object, params.seed)
        cam2world = cam2world_matrices(obj_angles.double(), params.radius).numpy()
        tasks.append(RenderTask(
            root=str(root), data_path=str(data_path), obj=obj, object_radius=params.object_radius, views=views,
            view_matrices=np.linalg.inv(cam2world), fov=params.fov, resolution=params.resolution,
            supersampling=params.supersampling,
            # Clip planes well outside the object's depth range [radius − ρ, radius + ρ].
            near=0.5 * (params.radius - params.object_radius), far=2.0 * (params.radius + params.object_radius),
        ))
        for view, a in zip(views, obj_angles.tolist(), strict=True):
            angles[f"images/{obj.name}/{view}"] = a
    return tasks, angles


def object_cameras(name: str, views: int, seed: int) -> torch.Tensor:
    """Angles [views, 3] of an object's cameras: ``spherical_uniform`` (docs/method.md §6.3), roll 0.

    Seeded by the object's name, so an object's cameras do not depend on which other objects are built.
    """
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
    return sample_spherical_uniform(views, generator=generator)


def _render_all(tasks: list[RenderTask], workers: int | None, progress: bool) -> dict[str, str]:
    """Run ``render_object`` over the tasks, in worker processes when more than one is asked for."""
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = max(1, min(workers, len(tasks)))
    hashes: dict[str, str] = {}
    bar = tqdm(total=len(tasks), unit="obj", desc="built-in dataset", disable=not progress)
    if workers == 1:
        for task in tasks:
            hashes.update(render_object(task))
            bar.update()
    else:
        # spawn, not fork: the parent may hold torch threads, and forking a threaded process is unsafe.
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for result in pool.imap_unordered(render_object, tasks):
                hashes.update(result)
                bar.update()
    bar.close()
    return hashes


def content_hash(hashes: dict[str, str]) -> str:
    """sha256 over the sorted (relative path, file sha256) pairs: one number for the whole dataset."""
    digest = hashlib.sha256()
    for rel in sorted(hashes):
        digest.update(f"{rel}\0{hashes[rel]}\n".encode())
    return digest.hexdigest()


def read_manifest(root: str | os.PathLike) -> dict | None:
    """The manifest of a built dataset, or None when there is none (or it is unreadable)."""
    try:
        return json.loads((Path(root) / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def is_complete(root: Path, params: BuildParams) -> bool:
    """True when ``root`` holds a finished build with these parameters and all of its files.

    A manifest is only ever written as the last step inside the temporary folder that is then renamed,
    so its presence means the build finished; counting files catches later deletions.
    """
    manifest = read_manifest(root)
    if manifest is None:
        return False
    stored = dict(manifest.get("params") or {})
    if params.pybullet is None:  # nothing to compare with here: a finished build is as good as any
        stored["pybullet"] = None
    if stored != asdict(params):
        return False
    n = manifest.get("num_images")
    return all(_count_files(root / sub) == n for sub in ("images", "geometry"))


def _count_files(folder: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(folder))


def _install(tmp: Path, out: Path, params: BuildParams, force: bool) -> None:
    """Move the finished build to ``out``, replacing a stale (or, with ``force``, any) build there.

    A complete build that another process installed meanwhile is kept (its readers may already use it);
    ours is then discarded.
    """
    if out.exists() and (force or not is_complete(out, params)):
        stale = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        with contextlib.suppress(FileNotFoundError):  # another process may have moved it already
            out.rename(stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        tmp.rename(out)
    except OSError:
        if not is_complete(out, params):
            raise


def load_geometry(root: str | os.PathLike, image: str) -> tuple[np.ndarray, np.ndarray]:
    """Depth float32 [R, R] (along the ray, +inf off the object) and coverage float32 [R, R] in [0, 1] of
    an image of a built dataset, given its relative path (``images/<object>/<view>.png``) or key."""
    with np.load(geometry_file(root, image)) as arrays:
        return arrays["depth"].astype(np.float32), arrays["mask"].astype(np.float32) / 255.0
