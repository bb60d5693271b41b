"""Typed configuration of the model: cameras, rendering, patches, generator, discriminator, presets.

Every field has the paper's default (docs/method.md §1–§6); a preset per paper dataset fills in what differs.
Configs are plain dataclasses so they serialise to JSON (``dataclasses.asdict``) and back (``from_dict``).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

PATCH_DISTRIBUTIONS = ("beta", "uniform", "discrete_uniform")
BACKGROUNDS = (None, "plane", "sphere")
CLAMP_MODES = ("softplus", "relu")


@dataclass
class CameraConfig:
    """The virtual camera of a dataset (docs/method.md §2.1, §6.3). Distances in world units, fov in degrees."""

    fov: float = 12.0
    radius: float = 1.0
    ray_start: float = 0.88
    ray_end: float = 1.12
    cube_scale: float = 0.2
    distribution: str = "custom"  # "custom" (dataset poses) | "spherical_uniform" | "normal"
    yaw_mean: float = 0.0
    yaw_std: float = 0.3
    pitch_mean: float = math.pi / 2
    pitch_std: float = 0.155

    def __post_init__(self) -> None:
        if not 0 < self.ray_start < self.ray_end:
            raise ValueError(f"need 0 < ray_start < ray_end, got {self.ray_start}, {self.ray_end}")
        if not 0 < self.fov < 180:
            raise ValueError(f"fov must be in (0, 180) degrees, got {self.fov}")


@dataclass
class SphereBackgroundConfig:
    """NeRF++ inverted-sphere background MLP (docs/method.md §1.6). ``posenc_period_len`` L also fixes the number of
    Fourier frequencies, ⌈log2 L⌉ (6 for the default 64), as in the original."""

    num_blocks: int = 2
    channel_base: int = 32768
    channel_max: int = 128
    posenc_period_len: float = 64.0
    num_steps: int = 8
    start: float = 1.0
    num_ws: int = 4


@dataclass
class RenderConfig:
    """Volume rendering (docs/method.md §2.3–2.6)."""

    num_ray_steps: int = 48
    white_back: bool = False
    last_back: bool = False
    # The original closes the far end of the frustum (last interval 1e10) unless a background model is on, which
    # makes it an opaque, learnt backdrop: white_back never shows, and a generator can paint each view on that
    # backdrop instead of building an object (docs/results.md measured this). open_far_end gives the last
    # interval 1e-3, as with a background model, so rays that miss the object see white_back (or 0).
    open_far_end: bool = False
    density_shift: float = 0.0
    clamp_mode: str = "softplus"
    background: str | None = None
    sphere: SphereBackgroundConfig = field(default_factory=SphereBackgroundConfig)
    # False renders the foreground alone (a background model's short last interval kept), as the original's
    # foreground/background separation figures do.
    draw_background: bool = True
    chunk_rays: int = 128 * 128

    def __post_init__(self) -> None:
        if self.background not in BACKGROUNDS:
            raise ValueError(f"background must be one of {BACKGROUNDS}, got {self.background!r}")
        if self.clamp_mode not in CLAMP_MODES:
            raise ValueError(f"clamp_mode must be one of {CLAMP_MODES}, got {self.clamp_mode!r}")
        if self.num_ray_steps < 2:
            raise ValueError(f"num_ray_steps must be ≥ 2, got {self.num_ray_steps}")


@dataclass
class PatchConfig:
    """Patch-scale sampling (docs/method.md §3). ``min_scale`` defaults to resolution / image_resolution."""

    image_resolution: int = 256
    resolution: int = 64
    enabled: bool = True
    distribution: str = "beta"
    min_scale: float | None = None
    max_scale: float = 1.0
    alpha: float = 1.0
    beta_start: float = 0.001
    beta_end: float = 0.8
    anneal_kimg: float = 10000.0
    discrete_support: tuple[float, ...] = (0.25, 1.0)
    group_size: int = 4

    def __post_init__(self) -> None:
        if self.distribution not in PATCH_DISTRIBUTIONS:
            raise ValueError(f"patch distribution must be one of {PATCH_DISTRIBUTIONS}, got {self.distribution!r}")
        if self.resolution > self.image_resolution:
            raise ValueError(f"patch resolution {self.resolution} exceeds image resolution {self.image_resolution}")
        if self.min_scale is None:
            self.min_scale = self.resolution / self.image_resolution
        if self.min_scale * self.image_resolution < self.resolution - 1e-6:
            raise ValueError(
                f"min_scale {self.min_scale} would upsample patches beyond the native resolution "
                f"(need min_scale ≥ {self.resolution}/{self.image_resolution})"
            )
        if not 0 < self.min_scale <= self.max_scale <= 1:
            raise ValueError(f"need 0 < min_scale ≤ max_scale ≤ 1, got {self.min_scale}, {self.max_scale}")
        self.discrete_support = tuple(self.discrete_support)


@dataclass
class GeneratorConfig:
    """Tri-plane generator architecture (docs/method.md §1)."""

    z_dim: int = 512
    w_dim: int = 512
    c_dim: int = 0
    mapping_layers: int = 2
    image_resolution: int = 256
    patch_resolution: int = 64
    triplane_resolution: int = 512
    triplane_channels: int = 32
    channel_base: int = 32768
    channel_max: int = 512
    use_noise: bool = True
    conv_clamp: float | None = 256.0
    mlp_hidden: int = 64
    mlp_layers: int = 2
    # The field's raw density is the MLP's output × density_gain (1 in the original). Like an lr multiplier on
    # that output, a gain > 1 lets the density reach the values of an opaque surface (σ ≈ 100 per world unit
    # puts the expected depth within 1 % of the ray interval behind it) in far fewer steps.
    density_gain: float = 1.0
    camera_cond: bool = False
    camera_cond_drop_p: float = 0.0
    camera_cond_noise_std: float = 0.0
    mean_camera_pose: tuple[float, float, float] = (0.0, math.pi / 2, 0.0)
    nerf_noise_std_init: float = 1.0
    nerf_noise_kimg_growth: float = 5000.0
    camera: CameraConfig = field(default_factory=CameraConfig)
    render: RenderConfig = field(default_factory=RenderConfig)

    def __post_init__(self) -> None:
        self.mean_camera_pose = tuple(self.mean_camera_pose)
        if self.mlp_layers < 1:
            raise ValueError(f"mlp_layers must be ≥ 1, got {self.mlp_layers}")
        if self.density_gain <= 0:
            raise ValueError(f"density_gain must be positive, got {self.density_gain}")


@dataclass
class DiscriminatorConfig:
    """Patch discriminator (docs/method.md §4). ``input_resolution`` is the patch size r it sees."""

    image_resolution: int = 256
    input_resolution: int = 64
    # 4: D also sees each patch's alpha (the data's coverage for reals, G's opacity for fakes; --d-alpha).
    img_channels: int = 3
    c_dim: int = 0
    channel_base: int = 16384
    channel_max: int = 512
    conv_clamp: float | None = 256.0
    num_fp16_res: int = 4
    mbstd_group_size: int = 4
    mbstd_num_channels: int = 1
    hyper_mod: bool = True
    hyper_mod_dim: int = 512
    patch_params_cond: bool = True
    camera_cond: bool = False
    camera_cond_raw: bool = False
    camera_cond_drop_p: float = 0.0
    camera_cond_noise_std: float = 0.0

    @property
    def num_additional_start_blocks(self) -> int:
        """Stride-1 start blocks: log2(R / r), so depth and widths equal a D built for R² inputs."""
        return int(round(math.log2(self.image_resolution / self.input_resolution)))


@dataclass
class ModelConfig:
    """Everything that defines the networks and the patch distribution they are trained with."""

    name: str = "custom"
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    patch: PatchConfig = field(default_factory=PatchConfig)
    r1_gamma: float = 0.1

    def with_image_resolution(self, resolution: int) -> ModelConfig:
        """The same networks for ``resolution``² images: patches keep their size, so the smallest patch
        scale becomes patch / image resolution and D gains or loses stride-1 start blocks (docs/method.md §4)."""
        patch = self.patch.resolution
        if resolution < patch or resolution & (resolution - 1):
            raise ValueError(f"image resolution must be a power of two ≥ the {patch}² patches, got {resolution}")
        return dataclasses.replace(
            self,
            generator=dataclasses.replace(self.generator, image_resolution=resolution),
            discriminator=dataclasses.replace(self.discriminator, image_resolution=resolution),
            patch=dataclasses.replace(self.patch, image_resolution=resolution, min_scale=None),
        )


T = TypeVar("T")

# Fields that earlier versions wrote and that are now derived from others: read and ignored, so every
# checkpoint saved before stays loadable. (num_fourier_freqs: the sphere's Fourier features follow from
# posenc_period_len, as in the original.)
RETIRED_FIELDS: dict[str, frozenset[str]] = {"SphereBackgroundConfig": frozenset({"num_fourier_freqs"})}


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Rebuild a (nested) config dataclass from ``dataclasses.asdict`` output (e.g. JSON read from a file).

    Every value is checked against its field's type before anything is built: ints are whole numbers ≥ 0
    (every int field is a count or a size), floats finite, bools true bools. Raises ValueError naming the
    field (``generator.z_dim``) for a wrong type or range, an unknown key, or a value the config refuses."""
    label = where.rstrip(".") or cls.__name__
    if not isinstance(data, dict):
        raise ValueError(f"config {label} must be a JSON object, got {type(data).__name__}")
    data = {k: v for k, v in data.items() if k not in RETIRED_FIELDS.get(cls.__name__, ())}
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        sub = _dataclass_type(cls, key)
        kwargs[key] = from_dict(sub, value, f"{where}{key}.") if sub is not None \
            else _checked_value(hints[key], value, f"{where}{key}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:
        raise ValueError(f"config {label}: {err}") from err


def config_differences(before: Any, after: Any, where: str = "") -> list[str]:
    """``"path: before → after"`` for every field of two configs of one dataclass type that differs, nested
    dataclasses by dotted path (``discriminator.camera_cond: False → True``)."""
    found = []
    for f in dataclasses.fields(before):
        a, b, name = getattr(before, f.name), getattr(after, f.name), where + f.name
        if dataclasses.is_dataclass(a) and type(a) is type(b):
            found += config_differences(a, b, name + ".")
        elif a != b:
            found.append(f"{name}: {a!r} → {b!r}")
    return found


def _checked_value(tp: Any, value: Any, name: str) -> Any:
    """``value`` if it fits the field type ``tp`` (int, float, bool, str, X | None, tuple[float, ...]), else a
    ValueError naming the field."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return value
        tp = next(a for a in args if a is not type(None))
        args = typing.get_args(tp)
    if typing.get_origin(tp) is tuple:
        if not isinstance(value, (list, tuple)) or (Ellipsis not in args and len(value) != len(args)):
            raise ValueError(f"config field {name} must be a list of {len(args) if Ellipsis not in args else 'any'}"
                             f" numbers, got {value!r:.60}")
        return [_checked_value(float, v, f"{name}[{i}]") for i, v in enumerate(value)]
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
        str: lambda v: isinstance(v, str),
    }[tp](value)
    if not ok:
        kind = {bool: "true or false", int: "a whole number ≥ 0", float: "a finite number", str: "a string"}[tp]
        raise ValueError(f"config field {name} must be {kind}, got {value!r:.60}")
    return value


def _dataclass_type(cls: type, name: str) -> type | None:
    default = next(f for f in dataclasses.fields(cls) if f.name == name).default_factory
    if default is dataclasses.MISSING:
        return None
    probe = default()
    return type(probe) if dataclasses.is_dataclass(probe) else None


def _paper_preset(name: str, resolution: int, camera: CameraConfig, c_dim: int, gamma: float,
                  white_back: bool) -> ModelConfig:
    return ModelConfig(
        name=name,
        generator=GeneratorConfig(
            c_dim=c_dim, image_resolution=resolution, camera=camera,
            render=RenderConfig(white_back=white_back),
        ),
        discriminator=DiscriminatorConfig(image_resolution=resolution, c_dim=c_dim),
        patch=PatchConfig(image_resolution=resolution),
        r1_gamma=gamma,
    )


FFHQ_CAMERA = CameraConfig(fov=12.0, radius=1.0, ray_start=0.88, ray_end=1.12, cube_scale=0.2, distribution="custom")
MEGASCANS_CAMERA = CameraConfig(fov=30.0, radius=1.0, ray_start=0.75, ray_end=1.25, cube_scale=0.475,
                                distribution="spherical_uniform")


def preset(name: str) -> ModelConfig:
    """A fresh config for a named preset: the paper's datasets and the CPU-friendly ``builtin``."""
    presets = {
        "ffhq512": lambda: _paper_preset("ffhq512", 512, dataclasses.replace(FFHQ_CAMERA), 0, 0.1, False),
        "ffhq256": lambda: _paper_preset("ffhq256", 256, dataclasses.replace(FFHQ_CAMERA), 0, 0.1, False),
        "cats256": lambda: _paper_preset("cats256", 256, dataclasses.replace(FFHQ_CAMERA), 0, 0.05, False),
        "plants256": lambda: _paper_preset("plants256", 256, dataclasses.replace(MEGASCANS_CAMERA), 198, 0.05, True),
        "food256": lambda: _paper_preset("food256", 256, dataclasses.replace(MEGASCANS_CAMERA), 10, 0.05, True),
        "builtin": _builtin_preset,
    }
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(presets)}")
    return presets[name]()


PRESETS = ("ffhq512", "ffhq256", "cats256", "plants256", "food256", "builtin")


def _builtin_preset() -> ModelConfig:
    """Small, CPU-trainable model for the built-in 64² object dataset (Megascans-like cameras).

    Its schedules are sized for runs of tens of kimg (the built-in run is 120, ``train.options.BUILTIN_RECIPE``),
    where the paper's are sized for 25,000: the patch-scale Beta anneals over the first 40 kimg (the paper's
    10,000 kimg would keep every patch a whole image), and the density noise decays over the first 20 (the
    paper's 5,000 kimg would keep it at full strength, blurring every surface). Both were first tuned for a
    40-kimg run and kept when the run grew to 120, which is what docs/results.md measured. γ = 0.05 follows
    StyleGAN2-ADA's rule of thumb, 0.0002 · resolution² / batch at 64² and batch 16. D's projection head sees the
    class alone (``patch_params_cond`` off; the hyper-modulation still tells D the patch): beside the 828-d patch
    embedding a 12-class one-hot barely moved the head (at 30 kimg D's logits differed by 0.1 between a real
    image's true and wrong labels, against a real/fake gap of 4), and G's classes took arbitrary colours.

    The field's ``density_gain`` is 10 (the original's 1): a surface needs a density of about 100 per world unit
    to put the expected depth within 1 % of the ray interval of it, and through the MLP's equalised-lr output a
    gain of 1 gets there in thousands of steps. Fitted directly to the mug's views (``benchmarks/fit_one_object.py
    --mode generator``, benchmarks/RESULTS.md "Capacity"), the generator's surface lay 0.120 of the ray interval
    behind the true one after 594 steps with gain 1 and 0.054 after 512 with gain 10 (silhouette IoU 0.84 → 0.93,
    mesh F@2 % 0.28 → 0.49); a gain of 30 was no better by the end of the same budget.
    """
    resolution, patch = 64, 32
    return ModelConfig(
        name="builtin",
        generator=GeneratorConfig(
            z_dim=128, w_dim=128, image_resolution=resolution, patch_resolution=patch,
            triplane_resolution=64, triplane_channels=16, channel_base=4096, channel_max=128,
            mlp_hidden=32, density_gain=10.0, camera=dataclasses.replace(MEGASCANS_CAMERA),
            nerf_noise_kimg_growth=20.0,
            render=RenderConfig(num_ray_steps=16, white_back=True, open_far_end=True),
        ),
        discriminator=DiscriminatorConfig(
            image_resolution=resolution, input_resolution=patch, channel_base=2048, channel_max=128,
            hyper_mod_dim=128, patch_params_cond=False,
        ),
        patch=PatchConfig(image_resolution=resolution, resolution=patch, anneal_kimg=40.0),
        r1_gamma=0.05,
    )
