"""The built-in dataset: real meshes bundled with pybullet, rendered like Megascans (docs/method.md §6.3).

What it holds. Every object of ``pybullet_data/random_urdfs`` (1000 procedurally generated shapes, each a
union of convex parts, drawn in the colour its URDF gives it; they have no texture) and about fifty
hand-picked meshes of ``pybullet_data`` (a duck, a soccer ball, a mug, toys, robot parts, …), drawn with
their own texture where the file has one and otherwise with the colour their URDF or material gives
them (``EXTRA_MESHES``). Two subsets (``SUBSETS``): ``toys``, what ``epigraf train`` learns by default, is twelve
of those meshes that a person names at a glance (a duck, a mug, a soccer ball, …) from 256 cameras each, and
each toy is a class (its index in ``TOYS``), so the run is class-conditional; ``all`` is every object from 12
cameras, unlabelled (its thousand random shapes are no classes). Each object is centred on its bounding box
and scaled to a bounding sphere of radius ``object_radius`` and is seen from ``views_per_object`` cameras
uniform on the sphere (the ``spherical_uniform`` distribution of docs/method.md §6.3) at the ``builtin``
preset's fov and radius, looking at the origin. pybullet's CPU rasteriser (TinyRenderer) draws it under a
light fixed in the world (so an object's colours do not depend on the view), with ``SUPERSAMPLING``² samples
per pixel, composited on white.

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

World and axes. The world is ours (+y up, docs/method.md §2.1); the view matrix handed to pybullet is the
inverse of our ``cam2world``, so pybullet's world is our world. pybullet's meshes are authored z-up
(URDF convention), so they are loaded rotated by −90° about x, which turns their +z into our +y.

Object size. ``object_radius`` = 0.9 · min(radius − near, far − radius, radius · sin(fov/2)): from every
camera the whole object then lies inside the ray band [near, far] the generator samples (docs/method.md §2.3),
and its silhouette (half-angle asin(ρ / radius)) inside the image. For the ``builtin`` preset (30°,
radius 1, band 0.75–1.25) ρ = 0.225, well inside the tri-plane cube (half-side 0.475, docs/method.md §11.7).
This matches Megascans, whose renders (max dimension 2 at distance 3.5, 45° fov) put the object at
about the same fraction of the frame.

Cost: ``all``'s 1,049 objects × 12 views at 64² (12,588 images) take about 135 CPU-seconds, so a
little over a minute on 2 free cores, and 45 MB of files (about 110 MB on disk). The output is
deterministic: the same arguments, pybullet, Pillow and zlib give byte-identical files whatever
``workers`` is, and each object's cameras depend only on the seed and the object's name.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import io
import json
import logging
import math
import multiprocessing
import os
import shutil
import sys
import uuid
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from epigraf.cameras import cam2world_matrices, sample_spherical_uniform
from epigraf.config import preset

log = logging.getLogger(__name__)

VERSION = "v1"
DEFAULT_RESOLUTION = 64
# Objects a person names at a glance, each in a colour or texture of its own. With the far end of the frustum
# closed (the original's rendering) the builtin preset drew them as a billboard on it; ``open_far_end``
# is what lets them be objects (docs/results.md).
TOYS = ("duck", "mug", "soccerball", "racecar-wheel", "cone", "lego", "toy-cube", "toy-prism", "toy-cylinder",
        "torus", "bunny", "jenga")
SUBSETS: dict[str, tuple[str, ...] | None] = {"toys": TOYS, "all": None}
DEFAULT_SUBSET = "toys"
# Views per object by subset: 256 of each toy (3,072 images, enough cameras to pin down each shape), 12 of
# each of the 1,049 objects of ``all`` (12,588 images).
DEFAULT_VIEWS = {"toys": 256, "all": 12}
# Render side = resolution × this; the box filter that brings it down anti-aliases like the
# downsampled Megascans renders and gives masks a fractional coverage.
SUPERSAMPLING = 3
# Fraction of the largest admissible bounding-sphere radius (module docstring): a margin so that the
# generator's near and far samples and the border pixels see some background.
OBJECT_MARGIN = 0.9
# Fixed in the world, from above: every view of an object sees the same shading (the generator's
# colours do not depend on the view direction). No specular term (view-dependent) and no shadows.
LIGHT = {
    "lightDirection": [0.4, 1.0, 0.3],
    "lightColor": [1.0, 1.0, 1.0],
    "lightAmbientCoeff": 0.6,
    "lightDiffuseCoeff": 0.5,
    "lightSpecularCoeff": 0.0,
    "shadow": 0,
}
# A meshes' +z (URDF "up") becomes our +y: rotation by −90° about x, as an (x, y, z, w) quaternion.
Z_UP_TO_Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
Z_UP_TO_Y_UP_QUAT = (-math.sqrt(0.5), 0.0, 0.0, math.sqrt(0.5))

Rgba = tuple[float, float, float, float]
# Hand-picked single meshes of pybullet_data: (name, path, scale, colour). A colour of None draws the
# mesh's own texture unmodulated; otherwise it is the colour its URDF gives it (or, without one, its
# material's diffuse colour — TinyRenderer ignores material colours of untextured meshes).
EXTRA_MESHES: tuple[tuple[str, str, tuple[float, float, float], Rgba | None], ...] = (
    ("duck", "duck.obj", (1.0, 1.0, 1.0), None),
    ("soccerball", "soccerball.obj", (1.0, 1.0, 1.0), None),
    ("torus", "torus/torus_textured.obj", (1.0, 1.0, 1.0), None),
    ("checker-sphere", "textured_sphere_smooth.obj", (1.0, 1.0, 1.0), None),
    ("jenga", "jenga/jenga.obj", (0.15, 0.05, 0.03), None),
    ("domino", "domino/domino.obj", (1.0, 1.0, 1.0), None),
    ("concave-box", "toys/concave_box.obj", (1.0, 1.0, 1.0), None),
    ("tray", "tray/tray_textured.obj", (1.0, 1.0, 1.0), None),
    ("tray2", "tray/tray_textured2.obj", (1.0, 1.0, 1.0), None),
    ("racecar-wheel", "racecar/meshes/left_front_wheel.obj", (1.0, 1.0, 1.0), None),
    ("laikago-chassis", "laikago/chassis.obj", (1.0, 1.0, 1.0), None),
    ("laikago-hip-motor", "laikago/hip_motor.obj", (1.0, 1.0, 1.0), None),
    ("laikago-upper-leg", "laikago/upper_leg_left.obj", (1.0, 1.0, 1.0), None),
    ("laikago-lower-leg", "laikago/lower_leg3.obj", (1.0, 1.0, 1.0), None),
    ("a1-trunk", "a1/meshes/trunk.obj", (1.0, 1.0, 1.0), None),
    ("aliengo-trunk", "aliengo/meshes/trunk.obj", (1.0, 1.0, 1.0), None),
    ("aliengo-thigh", "aliengo/meshes/thigh.obj", (1.0, 1.0, 1.0), None),
    ("aliengo-calf", "aliengo/meshes/calf.obj", (1.0, 1.0, 1.0), None),
    ("franka-link1", "franka_panda/meshes/visual/link1.obj", (1.0, 1.0, 1.0), None),
    ("franka-link2", "franka_panda/meshes/visual/link2.obj", (1.0, 1.0, 1.0), None),
    ("franka-link3", "franka_panda/meshes/visual/link3.obj", (1.0, 1.0, 1.0), None),
    ("franka-link4", "franka_panda/meshes/visual/link4.obj", (1.0, 1.0, 1.0), None),
    ("franka-link5", "franka_panda/meshes/visual/link5.obj", (1.0, 1.0, 1.0), None),
    ("franka-link6", "franka_panda/meshes/visual/link6.obj", (1.0, 1.0, 1.0), None),
    ("franka-hand", "franka_panda/meshes/visual/hand.obj", (1.0, 1.0, 1.0), None),
    ("franka-finger", "franka_panda/meshes/visual/finger.obj", (1.0, 1.0, 1.0), None),
    ("t-motor", "quadruped/tmotor3.obj", (1.0, 1.0, 1.0), None),
    ("teddy", "teddy2_VHACD_CHs.obj", (1.0, 1.0, 1.0), (1.0, 1.0, 1.0, 1.0)),
    ("bunny", "bunny.obj", (1.0, 1.0, 1.0), (0.8, 0.8, 0.8, 1.0)),
    ("lego", "lego/lego.obj", (1.0, 1.0, 1.0), (1.0, 1.0, 0.4, 1.0)),
    ("mug", "objects/mug.obj", (1.0, 1.0, 1.0), (1.0, 0.2, 0.2, 1.0)),
    ("stone", "stone.obj", (1.0, 1.0, 1.0), (0.8, 0.8, 0.8, 1.0)),
    ("cone", "racecar/meshes/cone.obj", (1.0, 1.0, 1.0), (0.602, 0.301, 0.050, 1.0)),
    ("hokuyo", "racecar/meshes/hokuyo.obj", (1.0, 1.0, 1.0), (0.2, 0.2, 0.2, 1.0)),
    ("toy-cube", "toys/cube.obj", (1.0, 1.0, 1.0), (0.017, 0.64, 0.032, 1.0)),
    ("toy-prism", "toys/prism.obj", (1.0, 1.0, 1.0), (0.64, 0.007, 0.006, 1.0)),
    ("toy-cylinder", "toys/cylinder.obj", (1.0, 1.0, 1.0), (0.013, 0.019, 0.64, 1.0)),
    ("kuka-link0", "kuka_iiwa/meshes/link_0.obj", (1.0, 1.0, 1.0), (0.2, 0.2, 0.2, 1.0)),
    ("kuka-link1", "kuka_iiwa/meshes/link_1.obj", (1.0, 1.0, 1.0), (0.5, 0.7, 1.0, 1.0)),
    ("kuka-link2", "kuka_iiwa/meshes/link_2.obj", (1.0, 1.0, 1.0), (0.5, 0.7, 1.0, 1.0)),
    ("kuka-link3", "kuka_iiwa/meshes/link_3.obj", (1.0, 1.0, 1.0), (1.0, 0.424, 0.039, 1.0)),
    ("kuka-link4", "kuka_iiwa/meshes/link_4.obj", (1.0, 1.0, 1.0), (0.5, 0.7, 1.0, 1.0)),
    ("kuka-link5", "kuka_iiwa/meshes/link_5.obj", (1.0, 1.0, 1.0), (0.5, 0.7, 1.0, 1.0)),
    ("kuka-link6", "kuka_iiwa/meshes/link_6.obj", (1.0, 1.0, 1.0), (1.0, 0.424, 0.039, 1.0)),
    ("kuka-link7", "kuka_iiwa/meshes/link_7.obj", (1.0, 1.0, 1.0), (0.2, 0.2, 0.2, 1.0)),
    ("a1-thigh", "a1/meshes/thigh.obj", (1.0, 1.0, 1.0), (0.4, 0.4, 0.4, 1.0)),
    ("a1-calf", "a1/meshes/calf.obj", (1.0, 1.0, 1.0), (0.9, 0.9, 0.9, 1.0)),
    ("mini-cheetah-body", "mini_cheetah/meshes/mini_body.obj", (1.0, 1.0, 1.0), (0.8, 0.8, 0.8, 1.0)),
    ("mini-cheetah-upper-link", "mini_cheetah/meshes/mini_upper_link.obj", (1.0, 1.0, 1.0), (0.8, 0.8, 0.8, 1.0)),
)


@dataclass(frozen=True)
class MeshObject:
    """One object: a Wavefront .obj file of ``pybullet_data`` (``path`` relative to it), the per-axis scale
    its URDF applies, and the colour it is drawn in (None: its own texture)."""

    name: str
    path: str
    scale: tuple[float, float, float]
    rgba: Rgba | None

    @property
    def textured(self) -> bool:
        return self.rgba is None


def pybullet_data_path() -> Path:
    """The ``pybullet_data`` folder; ImportError with the install command when pybullet is missing."""
    _import_pybullet()
    import pybullet_data

    return Path(pybullet_data.getDataPath())


def catalogue(data_path: Path | None = None) -> list[MeshObject]:
    """Every object, the ``EXTRA_MESHES`` spread evenly among the random URDF shapes.

    The spreading makes any prefix (``num_objects``) a representative mix; the first object is the
    textured duck and the second a random shape.
    """
    root = pybullet_data_path() if data_path is None else data_path
    shapes = [_random_urdf_object(root, urdf) for urdf in sorted((root / "random_urdfs").glob("*/*.urdf"))]
    extras = [MeshObject(name, path, scale, rgba) for name, path, scale, rgba in EXTRA_MESHES]
    stride = max(1, len(shapes) // max(1, len(extras)))
    objects: list[MeshObject] = []
    for i, shape in enumerate(shapes):
        if i % stride == 0 and extras:
            objects.append(extras.pop(0))
        objects.append(shape)
    return objects + extras


def _random_urdf_object(root: Path, urdf: Path) -> MeshObject:
    """A ``random_urdfs`` shape: its visual mesh, mesh scale and material colour, read from its URDF."""
    visual = ET.parse(urdf).getroot().find("link/visual")
    mesh = visual.find("geometry/mesh") if visual is not None else None
    color = visual.find("material/color") if visual is not None else None
    if mesh is None or color is None:
        raise ValueError(f"{urdf}: expected a visual mesh with a material colour")
    scale = tuple(float(s) for s in mesh.get("scale", "1 1 1").split())
    rgba = tuple(float(c) for c in color.get("rgba").split())
    path = (urdf.parent / mesh.get("filename")).relative_to(root).as_posix()
    return MeshObject(f"shape-{urdf.stem}", path, scale, rgba)  # type: ignore[arg-type]


def object_radius(fov: float, radius: float, near: float, far: float) -> float:
    """Bounding-sphere radius objects are scaled to: inside the ray band and the image (module docstring)."""
    return OBJECT_MARGIN * min(radius - near, far - radius, radius * math.sin(math.radians(fov) / 2))


def read_obj(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Vertices float64 [N, 3] and triangles int64 [F, 3] (polygons fanned, indices from 0) of a .obj file."""
    vertices: list[list[float]] = []
    faces: list[list[int]] = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.startswith("v "):
                vertices.append([float(t) for t in line.split()[1:4]])
            elif line.startswith("f "):
                # "v", "v/vt", "v//vn" or "v/vt/vn"; negative indices count back from the latest vertex.
                idx = [int(t.split("/")[0]) for t in line.split()[1:]]
                idx = [i - 1 if i > 0 else len(vertices) + i for i in idx]
                faces.extend([idx[0], idx[k], idx[k + 1]] for k in range(1, len(idx) - 1))
    return np.asarray(vertices, dtype=np.float64).reshape(-1, 3), np.asarray(faces, dtype=np.int64).reshape(-1, 3)


@dataclass(frozen=True)
class Placement:
    """How an object sits in the world: world = position + R · (mesh_scale ⊙ vertex), R = ``Z_UP_TO_Y_UP``."""

    mesh_scale: tuple[float, float, float]
    position: tuple[float, float, float]


def placement(vertices: np.ndarray, scale: tuple[float, float, float], target_radius: float) -> Placement:
    """Centre the (scaled, rotated) vertices on their bounding box and scale them to ``target_radius``."""
    points = (vertices * np.asarray(scale)) @ Z_UP_TO_Y_UP.T
    centre = (points.min(axis=0) + points.max(axis=0)) / 2
    k = target_radius / np.linalg.norm(points - centre, axis=1).max()
    return Placement(tuple(float(s) * k for s in scale), tuple(float(c) for c in -k * centre))  # type: ignore[arg-type]


def object_mesh(obj: MeshObject, target_radius: float, data_path: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The object as rendered: world vertices [N, 3] (inside the sphere of ``target_radius``) and triangles."""
    root = pybullet_data_path() if data_path is None else data_path
    vertices, faces = read_obj(root / obj.path)
    place = placement(vertices, obj.scale, target_radius)
    return (vertices * np.asarray(place.mesh_scale)) @ Z_UP_TO_Y_UP.T + np.asarray(place.position), faces


# Rendering -----------------------------------------------------------------------------------------


def projection_matrix(fov: float, resolution: int, supersampling: int, near: float, far: float) -> np.ndarray:
    """OpenGL projection [4, 4] for pybullet that samples exactly our pixel grid (docs/method.md §2.2).

    Our grid puts x = ±1 (in units of tan(fov/2)) on the centres of the border pixels, so the image edges
    are at ±R/(R−1): the focal length in normalised device coordinates is (R−1)/(R·tan(fov/2)).
    TinyRenderer samples each pixel at its lower-left corner rather than its centre; shifting x and y by
    half a render pixel moves the samples to the centres (measured: the shift removes a half-pixel
    offset of rendered silhouettes).
    """
    f = (resolution - 1) / (resolution * math.tan(math.radians(fov) / 2))
    shift = 1.0 / (resolution * supersampling)
    return np.array([
        [f, 0.0, shift, 0.0],
        [0.0, f, shift, 0.0],
        [0.0, 0.0, -(far + near) / (far - near), -2.0 * far * near / (far - near)],
        [0.0, 0.0, -1.0, 0.0],
    ])


def ray_length_factor(fov: float, resolution: int, supersampling: int) -> np.ndarray:
    """[S, S] (S = resolution · supersampling): distance along the unit ray per unit of camera-space depth.

    A render pixel's centre sits at our camera-plane coordinates (x, y) (docs/method.md §2.2 grid extended to the
    finer render grid); its ray direction (x·t, y·t, −1) with t = tan(fov/2) has length √(1 + t²(x² + y²)).
    """
    size = resolution * supersampling
    ndc = -1.0 + (2.0 * np.arange(size) + 1.0) / size
    ours = ndc * resolution / (resolution - 1)
    t = math.tan(math.radians(fov) / 2)
    x, y = ours[None, :], -ours[:, None]
    return np.sqrt(1.0 + t * t * (x * x + y * y))


@dataclass(frozen=True)
class RenderTask:
    """Everything a worker needs for one object: where to write, what to draw, from where."""

    root: str
    data_path: str
    obj: MeshObject
    object_radius: float
    views: tuple[str, ...]
    view_matrices: np.ndarray  # [V, 4, 4] world → camera (OpenGL)
    fov: float
    resolution: int
    supersampling: int
    near: float
    far: float


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null: pybullet's C code prints its build banner there, past sys.stderr."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _import_pybullet():
    """pybullet, or ImportError naming the extra to install. Its import banner shows once, from the main
    process: worker processes import it silently."""
    in_worker = multiprocessing.parent_process() is not None
    try:
        with _stderr_silenced() if in_worker else contextlib.nullcontext():
            import pybullet
    except ImportError as err:
        raise ImportError("the built-in dataset renders pybullet's meshes: pip install 'epigraf[builtin]' "
                          "(or pip install pybullet)") from err
    return pybullet


_CLIENT: int | None = None


def _client() -> int:
    """This process's pybullet connection (one per worker process, opened on first use)."""
    global _CLIENT
    if _CLIENT is None:
        p = _import_pybullet()
        _CLIENT = p.connect(p.DIRECT)
    return _CLIENT


def render_object(task: RenderTask) -> dict[str, str]:
    """Render one object's views and write them under ``task.root``; returns {relative path: sha256}."""
    p = _import_pybullet()
    client = _client()
    p.resetSimulation(physicsClientId=client)
    obj = task.obj
    place = placement(read_obj(Path(task.data_path) / obj.path)[0], obj.scale, task.object_radius)
    shape_args = {} if obj.rgba is None else {"rgbaColor": list(obj.rgba)}
    shape = p.createVisualShape(p.GEOM_MESH, fileName=str(Path(task.data_path) / obj.path),
                                meshScale=list(place.mesh_scale), physicsClientId=client, **shape_args)
    p.createMultiBody(baseMass=0, baseVisualShapeIndex=shape, basePosition=list(place.position),
                      baseOrientation=list(Z_UP_TO_Y_UP_QUAT), physicsClientId=client)
    size = task.resolution * task.supersampling
    # pybullet takes 4×4 matrices as 16 floats in column-major order.
    projection = projection_matrix(task.fov, task.resolution, task.supersampling, task.near, task.far)
    projection_gl = projection.T.reshape(-1).tolist()
    ray_factor = ray_length_factor(task.fov, task.resolution, task.supersampling)
    hashes = {}
    for view, world2cam in zip(task.views, task.view_matrices, strict=True):
        _, _, rgba, zbuffer, segmentation = p.getCameraImage(
            size, size, world2cam.T.reshape(-1).tolist(), projection_gl, renderer=p.ER_TINY_RENDERER,
            physicsClientId=client, **LIGHT)
        rgb = np.reshape(np.asarray(rgba, dtype=np.uint8), (size, size, 4))[..., :3]
        covered = np.reshape(np.asarray(segmentation), (size, size)) >= 0
        zbuffer = np.reshape(np.asarray(zbuffer, dtype=np.float64), (size, size))
        eye_depth = task.far * task.near / (task.far - (task.far - task.near) * zbuffer)
        image, depth, mask = _downsample(rgb, covered, eye_depth * ray_factor, task.supersampling)
        key = f"{obj.name}/{view}"
        for rel, data in ((f"images/{key}.png", _png_bytes(image)),
                          (f"geometry/{key}.npz", _npz_bytes(depth=depth, mask=mask))):
            _write(Path(task.root) / rel, data)
            hashes[rel] = hashlib.sha256(data).hexdigest()
    return hashes


def _downsample(rgb: np.ndarray, covered: np.ndarray, distance: np.ndarray,
                k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Box-filter k×k render pixels into one: RGB on white, depth over the covered samples, coverage."""

    def box_sum(x: np.ndarray, dtype: type) -> np.ndarray:
        # k² strided slices added up: several times faster than summing a 5-d reshaped view.
        total = np.zeros((x.shape[0] // k, x.shape[1] // k, *x.shape[2:]), dtype=dtype)
        for a in range(k):
            for b in range(k):
                total += x[a::k, b::k]
        return total

    n = k * k
    # Integer sums and round-half-up division keep the colours exact and platform-independent.
    on_white = rgb.copy()
    on_white[~covered] = 255
    image = ((box_sum(on_white, np.uint32) + n // 2) // n).astype(np.uint8)
    count = box_sum(covered, np.uint32)
    summed = box_sum(np.where(covered, distance, 0.0), np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        depth = np.where(count > 0, summed / count, np.inf).astype(np.float16)
    mask = ((count * 255 + n // 2) // n).astype(np.uint8)
    return image, depth, mask


def _png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    """A compressed .npz (what ``np.load`` reads) with fixed entry timestamps: ``np.savez_compressed``
    stamps the current time into the archive, which would make identical builds differ."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name, array in arrays.items():
            data = io.BytesIO()
            np.save(data, array, allow_pickle=False)
            entry = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            entry.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(entry, data.getvalue())
    return buf.getvalue()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


# Building ------------------------------------------------------------------------------------------


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
    """``$EPIGRAF_CACHE``, else ``$XDG_CACHE_HOME/epigraf``, else ``~/.cache/epigraf``."""
    if os.environ.get("EPIGRAF_CACHE"):
        return Path(os.environ["EPIGRAF_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "epigraf"


def default_dir(resolution: int = DEFAULT_RESOLUTION, subset: str = DEFAULT_SUBSET, num_objects: int | None = None,
                views_per_object: int | None = None, seed: int = 0) -> Path:
    """``<cache>/builtin-<version>-<subset>-<resolution>``; non-default sizes or seeds get a suffix of their own."""
    views = _views(subset, views_per_object)
    name = f"builtin-{VERSION}-{subset}-{resolution}"
    if (num_objects, views, seed) != (None, DEFAULT_VIEWS[subset], 0):
        name += f"-n{num_objects or 'all'}-v{views}-s{seed}"
    return cache_root() / name


def _check_subset(subset: str) -> None:
    if subset not in SUBSETS:
        raise ValueError(f"unknown built-in subset {subset!r}; choose from {sorted(SUBSETS)}")


def _views(subset: str, views_per_object: int | None) -> int:
    """The views per object asked for, else the subset's default."""
    _check_subset(subset)
    return DEFAULT_VIEWS[subset] if views_per_object is None else views_per_object


def subset_objects(subset: str, data_path: Path | None = None) -> list[MeshObject]:
    """The objects of a named subset, in ``catalogue()`` order for ``all`` and in the subset's order otherwise."""
    _check_subset(subset)
    objects = catalogue(data_path)
    names = SUBSETS[subset]
    if names is None:
        return objects
    by_name = {o.name: o for o in objects}
    return [by_name[name] for name in names]


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
    key = image.removesuffix(".png").removeprefix("images/")
    with np.load(Path(root) / "geometry" / f"{key}.npz") as arrays:
        return arrays["depth"].astype(np.float32), arrays["mask"].astype(np.float32) / 255.0
