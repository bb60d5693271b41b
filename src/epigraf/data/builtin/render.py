"""Rendering the built-in dataset's objects with pybullet's CPU rasteriser (TinyRenderer).

Each object is seen from its cameras looking at the origin, drawn under a light fixed in the world (so an
object's colours do not depend on the view), with ``SUPERSAMPLING``² samples per pixel, composited on white;
``render_object`` writes the images, depth and masks of one object (the format: ``build``'s docstring). The
view matrix handed to pybullet is the inverse of our ``cam2world``, so pybullet's world is our world
(``catalogue``'s docstring).
"""

from __future__ import annotations

import hashlib
import io
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from epigraf.data.builtin.catalogue import Z_UP_TO_Y_UP_QUAT, MeshObject, _import_pybullet, placement, read_obj

# Render side = resolution × this; the box filter that brings it down anti-aliases like the
# downsampled Megascans renders and gives masks a fractional coverage.
SUPERSAMPLING = 3
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
