"""The built-in dataset's objects (docs/method.md §6.3) and how each sits in the world.

What it holds. Every object of ``pybullet_data/random_urdfs`` (1000 procedurally generated shapes, each a
union of convex parts, drawn in the colour its URDF gives it; they have no texture) and about fifty
hand-picked meshes of ``pybullet_data`` (a duck, a soccer ball, a mug, toys, robot parts, …), drawn with
their own texture where the file has one and otherwise with the colour their URDF or material gives
them (``EXTRA_MESHES``). Two subsets (``SUBSETS``): ``toys``, what ``epigraf train`` learns by default, is twelve
of those meshes that a person names at a glance (a duck, a mug, a soccer ball, …) from 256 cameras each, and
each toy is a class (its index in ``TOYS``), so the run is class-conditional; ``all`` is every object from 12
cameras, unlabelled (its thousand random shapes are no classes). Each object is centred on its bounding box
and scaled to a bounding sphere of radius ``object_radius``.

World and axes. The world is ours (+y up, docs/method.md §2.1). pybullet's meshes are authored z-up
(URDF convention), so they are loaded rotated by −90° about x, which turns their +z into our +y.

Object size. ``object_radius`` = 0.9 · min(radius − near, far − radius, radius · sin(fov/2)): from every
camera the whole object then lies inside the ray band [near, far] the generator samples (docs/method.md §2.3),
and its silhouette (half-angle asin(ρ / radius)) inside the image. For the ``builtin`` preset (30°,
radius 1, band 0.75–1.25) ρ = 0.225, well inside the tri-plane cube (half-side 0.475, docs/method.md §11.7).
This matches Megascans, whose renders (max dimension 2 at distance 3.5, 45° fov) put the object at
about the same fraction of the frame.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Objects a person names at a glance, each in a colour or texture of its own. With the far end of the frustum
# closed (the original's rendering) the builtin preset drew them as a billboard on it; ``open_far_end``
# is what lets them be objects (docs/results.md).
TOYS = ("duck", "mug", "soccerball", "racecar-wheel", "cone", "lego", "toy-cube", "toy-prism", "toy-cylinder",
        "torus", "bunny", "jenga")
SUBSETS: dict[str, tuple[str, ...] | None] = {"toys": TOYS, "all": None}
DEFAULT_SUBSET = "toys"
# Fraction of the largest admissible bounding-sphere radius (module docstring): a margin so that the
# generator's near and far samples and the border pixels see some background.
OBJECT_MARGIN = 0.9
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


def _check_subset(subset: str) -> None:
    if subset not in SUBSETS:
        raise ValueError(f"unknown built-in subset {subset!r}; choose from {sorted(SUBSETS)}")


def subset_objects(subset: str, data_path: Path | None = None) -> list[MeshObject]:
    """The objects of a named subset, in ``catalogue()`` order for ``all`` and in the subset's order otherwise."""
    _check_subset(subset)
    objects = catalogue(data_path)
    names = SUBSETS[subset]
    if names is None:
        return objects
    by_name = {o.name: o for o in objects}
    return [by_name[name] for name in names]
