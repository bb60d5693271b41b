"""Query parameters of the viewer's API → validated requests, with one clear message per mistake.

Every parameter is optional (defaults: the model's camera and ``epigraf generate``'s defaults); unknown or
repeated parameters are errors, so a typo never silently renders the default. Ranges come from the model
(``ViewLimits``), see ``epigraf.viewer.session`` for the zoom rule.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import parse_qs

from epigraf.export.mesh import MESH_FORMATS

MODES = ("rgb", "depth", "normals")
IMAGE_FORMATS = ("png", "jpeg")
# numpy's RandomState, which turns a seed into z, takes seeds in [0, 2³²).
MAX_SEED = 2**32 - 1
MIN_RESOLUTION = 8
MAX_RAY_STEP_MULTIPLIER = 8
# Truncation beyond this leaves the learned distribution so far that the renders are noise, not a view.
PSI_RANGE = (-1.0, 2.0)
MESH_GRID_RANGE = (16, 512)
DEFAULT_MESH_GRID = 128
_CLIENT = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

T = TypeVar("T")


class ParameterError(ValueError):
    """A request parameter is missing its form or range; the message names the parameter and what is allowed."""


@dataclass(frozen=True)
class ViewLimits:
    """What a frame request may ask of this model: defaults and ranges (fov in degrees)."""

    c_dim: int
    fov: float
    fov_min: float
    fov_max: float
    resolution: int
    max_resolution: int
    truncation: float
    ray_step_multiplier: int


@dataclass(frozen=True)
class Latent:
    """One scene: seed → (z, class) → truncated w, optionally blended in W towards ``seed2`` by ``mix``.

    Canonical (see ``latent``): ``seed2`` is None unless 0 < mix < 1, so equal scenes share one cache entry and a
    mix of 0 or 1 renders exactly the single-seed path of ``epigraf generate``.
    """

    seed: int
    psi: float
    class_index: int | None = None
    seed2: int | None = None
    mix: float = 0.0


@dataclass(frozen=True)
class FrameRequest:
    """One view of a latent: camera (radians, degrees), output size, ray-step multiplier and what to show."""

    latent: Latent
    yaw: float
    pitch: float
    fov: float
    resolution: int
    ray_steps: int
    mode: str = "rgb"
    image_format: str = "png"


@dataclass(frozen=True)
class MeshRequest:
    """A mesh of a latent: grid points per side, file format, iso-level (None: automatic)."""

    latent: Latent
    grid: int
    mesh_format: str
    level: float | None = None


@dataclass(frozen=True)
class Sequencing:
    """Who asked and in which order: the page sends a tab id and an increasing number per frame request."""

    client: str | None = None
    seq: int | None = None


class _Query:
    """The single values of a query string, consumed parameter by parameter; leftovers are unknown names."""

    def __init__(self, query: str | Mapping[str, Sequence[str]]) -> None:
        values = parse_qs(query, keep_blank_values=True) if isinstance(query, str) else dict(query)
        repeated = sorted(k for k, v in values.items() if len(v) != 1)
        if repeated:
            raise ParameterError(f"parameter(s) given more than once: {', '.join(repeated)}")
        self._values = {k: v[0] for k, v in values.items()}

    def take(self, name: str, parse: Callable[[str, str], T], default: T) -> T:
        raw = self._values.pop(name, None)
        return default if raw is None or raw.strip() == "" else parse(name, raw.strip())

    def finish(self) -> None:
        if self._values:
            raise ParameterError(f"unknown parameter(s): {', '.join(sorted(self._values))}")


def _text(name: str, raw: str) -> str:
    return raw


def _int(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ParameterError(f"{name} must be an integer, got {raw!r}") from None


def _float(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ParameterError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise ParameterError(f"{name} must be finite, got {raw!r}")
    return value


def _number(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _in_range(name: str, value: T, low: T, high: T, unit: str = "") -> T:
    if not low <= value <= high:
        raise ParameterError(f"{name} must be in [{_number(low)}, {_number(high)}]{unit}, got {_number(value)}")
    return value


def _choice(options: Sequence[str]) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        if raw.lower() not in options:
            raise ParameterError(f"{name} must be one of {', '.join(options)}, got {raw!r}")
        return raw.lower()

    return parse


def _seed(name: str, raw: str) -> int:
    return _in_range(name, _int(name, raw), 0, MAX_SEED)


def _latent(q: _Query, limits: ViewLimits) -> Latent:
    seed = q.take("seed", _seed, 0)
    psi = _in_range("psi", q.take("psi", _float, limits.truncation), *PSI_RANGE)
    raw_class = q.take("class", _text, "random")
    class_index = None
    if raw_class.lower() != "random":
        if limits.c_dim == 0:
            raise ParameterError("class is for class-conditional models; this model is unconditional")
        class_index = _in_range("class", _int("class", raw_class), 0, limits.c_dim - 1)
    seed2 = q.take("seed2", _seed, None)
    mix = _in_range("mix", q.take("mix", _float, 0.0), 0.0, 1.0)
    if seed2 is None and mix != 0:
        raise ParameterError("mix needs seed2, the seed to interpolate towards")
    return latent(seed, psi, class_index, seed2, mix)


def latent(seed: int, psi: float, class_index: int | None = None, seed2: int | None = None,
           mix: float = 0.0) -> Latent:
    """The canonical Latent: a mix of 0 is ``seed`` alone and a mix of 1 is ``seed2`` alone."""
    if seed2 is None or mix == 0:
        return Latent(seed, psi, class_index)
    if mix == 1:
        return Latent(seed2, psi, class_index)
    return Latent(seed, psi, class_index, seed2, mix)


def _sequencing(q: _Query) -> Sequencing:
    client = q.take("client", _text, None)
    seq = q.take("seq", _int, None)
    if (client is None) != (seq is None):
        raise ParameterError("client and seq go together: give both or neither")
    if client is not None and not _CLIENT.match(client):
        raise ParameterError("client must be 1–64 letters, digits, '-' or '_'")
    if seq is not None and seq < 0:
        raise ParameterError(f"seq must be ≥ 0, got {seq}")
    return Sequencing(client, seq)


def parse_frame(query: str | Mapping[str, Sequence[str]], limits: ViewLimits) -> tuple[FrameRequest, Sequencing]:
    """``/api/frame`` parameters → (FrameRequest, Sequencing). Raises ParameterError."""
    q = _Query(query)
    lat = _latent(q, limits)
    yaw = q.take("yaw", _float, 0.0)
    pitch = _in_range("pitch", q.take("pitch", _float, math.pi / 2), 0.0, math.pi,
                      " radians (polar angle from +y, π/2 = horizon)")
    fov = _in_range("fov", q.take("fov", _float, limits.fov), limits.fov_min, limits.fov_max,
                    " degrees for this model")
    res = _in_range("res", q.take("res", _int, limits.resolution), MIN_RESOLUTION, limits.max_resolution, " pixels")
    steps = _in_range("steps", q.take("steps", _int, limits.ray_step_multiplier), 1, MAX_RAY_STEP_MULTIPLIER,
                      " (ray-step multiplier)")
    mode = q.take("mode", _choice(MODES), "rgb")
    image_format = q.take("format", _choice(IMAGE_FORMATS), "png")
    seqn = _sequencing(q)
    q.finish()
    return FrameRequest(lat, yaw, pitch, fov, res, steps, mode, image_format), seqn


def parse_mesh(query: str | Mapping[str, Sequence[str]], limits: ViewLimits) -> MeshRequest:
    """``/api/mesh`` parameters → MeshRequest. Raises ParameterError."""
    q = _Query(query)
    lat = _latent(q, limits)
    grid = _in_range("grid", q.take("grid", _int, DEFAULT_MESH_GRID), *MESH_GRID_RANGE, " points per side")
    mesh_format = q.take("format", _choice(MESH_FORMATS), "ply")
    level = q.take("level", _float, None)
    q.finish()
    return MeshRequest(lat, grid, mesh_format, level)
