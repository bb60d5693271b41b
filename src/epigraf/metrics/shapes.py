"""True shapes for the geometry metric: triangle meshes → inside/outside on a grid, surface samples, and a
density field that renders the mesh (``epigraf.metrics.geometry``).

Inside/outside (``occupancy_grid``) is the winding number of the mesh, counted along the grid lines: a ray
along +x from far outside adds +1 at every face it enters through (face normal against the ray) and −1 at
every face it leaves through, so behind k nested closed surfaces it reads k. A closed, outward-oriented mesh
gives exactly 1 inside and 0 outside, in any of the six axis directions. The meshes of the built-in toys are not
all closed — the mug's handle ends are open tubes inside its wall, the cube's twelve faces are stored twice —
so each direction's count is clipped to [0, 1] (a doubled face still reads "inside") and a grid point is inside
when the mean over the six directions exceeds ½ (a ray that slips through a hole miscounts on its own line,
outvoted by the other directions). Cost: one pass over the faces per axis and grid line they cover, milliseconds
for a few thousand faces at 128³, where a generalised winding number over all faces and points takes minutes.

``mesh_density_field`` turns a mesh into what the renderer and the mesh extraction take: points → (rgb,
raw density), with the raw density a steep function of the signed distance to the surface, interpolated
from a grid. It is the "model that renders the true shape" of the metric's sanity test.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree
from torch import Tensor

__all__ = [
    "TriangleMesh",
    "mesh_density_field",
    "nearest_distances",
    "occupancy_grid",
    "sample_surface",
    "signed_distance_grid",
    "sphere_mesh",
]

# The grid lines' offset from the exact grid coordinates, in grid steps: keeps a line from passing exactly
# through a mesh edge or vertex (where two faces would both, or neither, count it) without moving it measurably.
_LINE_JITTER = (1.234567e-6, 2.345678e-6)


@dataclass(frozen=True)
class TriangleMesh:
    """vertices float64 [N, 3] (world units), faces int64 [F, 3] (counter-clockwise seen from outside)."""

    vertices: np.ndarray
    faces: np.ndarray

    @property
    def triangles(self) -> np.ndarray:
        """[F, 3, 3]: the corners of every face."""
        return np.asarray(self.vertices, dtype=np.float64)[self.faces]

    @property
    def areas(self) -> np.ndarray:
        t = self.triangles
        return 0.5 * np.linalg.norm(np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]), axis=1)


def sample_surface(mesh: TriangleMesh, n: int, seed: int = 0) -> np.ndarray:
    """n points [n, 3] uniform on the surface (faces drawn by area, uniform barycentric coordinates), from a
    ``numpy.random.default_rng(seed)``. A mesh without area gives an empty [0, 3] array."""
    areas = mesh.areas
    total = areas.sum()
    if len(areas) == 0 or not total > 0 or n < 1:
        return np.zeros((0, 3))
    rng = np.random.default_rng(seed)
    face = rng.choice(len(areas), size=n, p=areas / total)
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    t = mesh.triangles[face]
    return (1 - s)[:, None] * t[:, 0] + (s * (1 - r2))[:, None] * t[:, 1] + (s * r2)[:, None] * t[:, 2]


def nearest_distances(points: np.ndarray, targets: np.ndarray, upper_bound: float = np.inf) -> np.ndarray:
    """Distance [P] from every point to its nearest target point; +inf when there are no targets or the
    nearest is farther than ``upper_bound`` (a bound makes the search for far points cheap)."""
    if len(targets) == 0:
        return np.full(len(points), np.inf)
    if len(points) == 0:
        return np.zeros(0)
    return cKDTree(targets).query(points, k=1, distance_upper_bound=upper_bound)[0]


def _axis_winding(tris: np.ndarray, axis: np.ndarray, a: int) -> tuple[np.ndarray, np.ndarray]:
    """Winding numbers of the grid points counted along axis ``a`` from −∞ and from +∞.

    → two int arrays [R, R, R] indexed (u, v, a) with (u, v, a) a cyclic order of (0, 1, 2).
    """
    r, h = len(axis), (axis[-1] - axis[0]) / (len(axis) - 1)
    u, v = (a + 1) % 3, (a + 2) % 3
    pu, pv, pa = tris[:, :, u], tris[:, :, v], tris[:, :, a]  # [F, 3] each
    # Twice the signed area in the (u, v) plane: the a-component of the (unnormalised) face normal.
    area = (pu[:, 1] - pu[:, 0]) * (pv[:, 2] - pv[:, 0]) - (pv[:, 1] - pv[:, 0]) * (pu[:, 2] - pu[:, 0])
    keep = area != 0
    pu, pv, pa, area = pu[keep], pv[keep], pa[keep], area[keep]
    # Grid lines inside each face's bounding box (jittered line coordinates, see _LINE_JITTER).
    ju, jv = _LINE_JITTER[0] * h, _LINE_JITTER[1] * h
    lo_u = np.clip(np.ceil((pu.min(1) - ju - axis[0]) / h), 0, r).astype(np.int64)
    hi_u = np.clip(np.floor((pu.max(1) - ju - axis[0]) / h), -1, r - 1).astype(np.int64)
    lo_v = np.clip(np.ceil((pv.min(1) - jv - axis[0]) / h), 0, r).astype(np.int64)
    hi_v = np.clip(np.floor((pv.max(1) - jv - axis[0]) / h), -1, r - 1).astype(np.int64)
    nu, nv = np.maximum(hi_u - lo_u + 1, 0), np.maximum(hi_v - lo_v + 1, 0)
    count = nu * nv
    face = np.repeat(np.arange(len(count)), count)
    local = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    iu = lo_u[face] + local // np.maximum(nv[face], 1)
    iv = lo_v[face] + local % np.maximum(nv[face], 1)
    qu, qv = axis[iu] + ju, axis[iv] + jv
    cu, cv, ca = pu[face], pv[face], pa[face]

    def edge(i: int, j: int) -> np.ndarray:  # twice the signed area of (corner i, corner j, q)
        return (cu[:, j] - cu[:, i]) * (qv - cv[:, i]) - (cv[:, j] - cv[:, i]) * (qu - cu[:, i])

    w0, w1, w2 = edge(1, 2), edge(2, 0), edge(0, 1)
    sign = np.sign(area[face])
    inside = (w0 * sign >= 0) & (w1 * sign >= 0) & (w2 * sign >= 0)
    w0, w1, w2, ca, sign = w0[inside], w1[inside], w2[inside], ca[inside], sign[inside]
    iu, iv = iu[inside], iv[inside]
    crossing = (w0 * ca[:, 0] + w1 * ca[:, 1] + w2 * ca[:, 2]) / (w0 + w1 + w2)
    line = iu * r + iv
    # From −∞ along +a a face with normal_a < 0 is entered (+1) by every grid point beyond the crossing.
    after = np.searchsorted(axis, crossing, side="right")
    from_below = np.bincount(line * (r + 1) + after, weights=-sign, minlength=r * r * (r + 1))
    from_below = np.cumsum(from_below.reshape(r, r, r + 1), axis=-1)[..., :r]
    # From +∞ along −a a face with normal_a > 0 is entered by every grid point before the crossing.
    before = np.searchsorted(axis, crossing, side="left")
    from_above = np.bincount(line * (r + 1) + before, weights=sign, minlength=r * r * (r + 1)).reshape(r, r, r + 1)
    from_above = np.flip(np.cumsum(np.flip(from_above, -1), axis=-1), -1)[..., 1:]
    return np.rint(from_below).astype(np.int64), np.rint(from_above).astype(np.int64)


def occupancy_grid(mesh: TriangleMesh, axis: np.ndarray) -> np.ndarray:
    """Inside/outside bool [R, R, R] of the grid ``axis`` × ``axis`` × ``axis`` (indexed [x, y, z]; ``axis``
    evenly spaced, increasing): the clipped winding number averaged over six directions (module docstring)."""
    axis = np.asarray(axis, dtype=np.float64)
    if axis.ndim != 1 or len(axis) < 2 or not np.all(np.diff(axis) > 0):
        raise ValueError("the grid axis must be an increasing 1-d array of at least 2 coordinates")
    tris = mesh.triangles
    votes = np.zeros((len(axis),) * 3)
    for a in range(3):
        order = np.argsort([(a + 1) % 3, (a + 2) % 3, a])  # (u, v, a) layout → (x, y, z)
        for w in _axis_winding(tris, axis, a):
            votes += np.clip(w, 0, 1).transpose(order)
    return votes / 6 > 0.5


def signed_distance_grid(mesh: TriangleMesh, axis: np.ndarray, samples_per_step: float = 2.0, seed: int = 0,
                         max_distance: float = np.inf) -> np.ndarray:
    """Signed distance float32 [R, R, R] to the surface on the grid (negative inside), indexed [x, y, z].

    The distance is to dense surface samples (about ``samples_per_step`` per grid step along the surface, so
    it errs by a fraction of a step near the surface), clipped to ``max_distance``; the sign is
    ``occupancy_grid``'s.
    """
    axis = np.asarray(axis, dtype=np.float64)
    h = (axis[-1] - axis[0]) / (len(axis) - 1)
    n = int(min(2_000_000, max(10_000, mesh.areas.sum() * (samples_per_step / h) ** 2)))
    surface = sample_surface(mesh, n, seed)
    points = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)
    dist = np.minimum(nearest_distances(points, surface, max_distance), max_distance).reshape((len(axis),) * 3)
    return np.where(occupancy_grid(mesh, axis), -dist, dist).astype(np.float32)


def mesh_density_field(mesh: TriangleMesh, resolution: int = 128, half_extent: float | None = None,
                       max_density: float = 1000.0, width: float | None = None) -> Callable[[Tensor], Tensor]:
    """A field that renders the mesh: points [..., 3] → [..., 4] (rgb = 0, raw density).

    raw density = max_density · tanh(−sdf / width): ≈ −max_density (σ ≈ 0) outside, +max_density inside, with
    the signed distance ``sdf`` interpolated (trilinear) from a ``resolution``³ grid over the cube of half-side
    ``half_extent`` (default: the mesh's bounding box plus 10 %, as a cube); points beyond the cube read its
    border, which is outside. width defaults to one grid step; distances beyond 4 widths, where tanh has
    saturated, are not searched for. With σ ≈ 1000 per world unit, a ray is half
    opaque 0.7 thousandths inside the surface, so renders put the surface where the mesh is.
    """
    v = np.asarray(mesh.vertices, dtype=np.float64)
    if half_extent is None:
        half_extent = 1.1 * float(np.abs(v).max())
    axis = np.linspace(-half_extent, half_extent, resolution)
    step = axis[1] - axis[0]
    width = step if width is None else width
    sdf = torch.from_numpy(signed_distance_grid(mesh, axis, max_distance=4 * width))
    # grid_sample indexes a [1, 1, D, H, W] volume with (x, y, z) = (W, H, D): store it as [z, y, x].
    volume = sdf.permute(2, 1, 0)[None, None].contiguous()

    def field(points: Tensor) -> Tensor:
        shape = points.shape[:-1]
        grid = (points.reshape(1, -1, 1, 1, 3) / half_extent).to(volume)
        d = F.grid_sample(volume, grid, mode="bilinear", padding_mode="border", align_corners=True)
        raw = max_density * torch.tanh(-d.reshape(*shape, 1) / width)
        return torch.cat([torch.zeros(*shape, 3, dtype=raw.dtype), raw], dim=-1).to(points.dtype)

    return field


def sphere_mesh(radius: float, centre: tuple[float, float, float] = (0.0, 0.0, 0.0),
                subdivisions: int = 4) -> TriangleMesh:
    """An icosphere (outward faces): the wrong shape of the metric's sanity test."""
    t = (1 + math.sqrt(5)) / 2
    verts = [(-1, t, 0), (1, t, 0), (-1, -t, 0), (1, -t, 0), (0, -1, t), (0, 1, t), (0, -1, -t), (0, 1, -t),
             (t, 0, -1), (t, 0, 1), (-t, 0, -1), (-t, 0, 1)]
    faces = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9), (5, 11, 4), (11, 10, 2),
             (10, 7, 6), (7, 1, 8), (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8), (3, 8, 9), (4, 9, 5), (2, 4, 11),
             (6, 2, 10), (8, 6, 7), (9, 8, 1)]
    vertices = [np.asarray(p, dtype=np.float64) / np.linalg.norm(p) for p in verts]
    for _ in range(subdivisions):
        cache: dict[tuple[int, int], int] = {}
        faces = [f for a, b, c in faces
                 for ab, bc, ca in [(_midpoint(vertices, cache, a, b), _midpoint(vertices, cache, b, c),
                                     _midpoint(vertices, cache, c, a))]
                 for f in ((a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca))]
    return TriangleMesh(np.asarray(vertices) * radius + np.asarray(centre), np.asarray(faces, dtype=np.int64))


def _midpoint(vertices: list[np.ndarray], cache: dict[tuple[int, int], int], i: int, j: int) -> int:
    """Index of the unit vector halfway between vertices i and j, appended on first use."""
    key = (min(i, j), max(i, j))
    if key not in cache:
        m = vertices[i] + vertices[j]
        vertices.append(m / np.linalg.norm(m))
        cache[key] = len(vertices) - 1
    return cache[key]
