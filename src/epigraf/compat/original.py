"""Build our networks from the original implementation's hyperparameters and state dicts (docs/method.md §12.2).

``config`` is the original's flat hyperparameter dict; its keys, and how each is read, are described in
docs/snapshot-format.md, "The original's hyperparameters". Original keys map to ours by prefix; the
original's constant buffers (the [1, 3, 3, 1] resampling filters and the Fourier coefficients of D's patch
and camera encoders and of the sphere background) are checked against the constants our modules compute and
then dropped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from epigraf.config import (
    CameraConfig,
    DiscriminatorConfig,
    GeneratorConfig,
    ModelConfig,
    PatchConfig,
    RenderConfig,
    SphereBackgroundConfig,
)
from epigraf.nn.discriminator import Discriminator
from epigraf.nn.generator import Generator
from epigraf.nn.layers import fir_filter_2d, log_fourier_coefficients
from epigraf.nn.state import load_state_strict

# (original prefix, our prefix), first match wins.
G_KEY_PREFIXES = (
    ("synthesis.tri_plane_decoder.", "synthesis.blocks."),
    ("synthesis.tri_plane_mlp.", "field.mlp."),
    ("synthesis.bg_model.", "background."),
    ("mapping.", "mapping."),
)
D_KEY_PREFIXES = (("", ""),)
# The Fourier coefficient buffers of the original's scalar encoders: D's patch encoder, D's camera encoder
# and the sphere background's coordinate encoder. Our modules compute their frequencies.
FOURIER_COEFS_SUFFIX = "fourier_encoder.fourier_coefs"


def _require(config: Mapping[str, Any], key: str) -> Any:
    if key not in config:
        raise ValueError(f"original config lacks {key!r}")
    return config[key]


# Options of the original's model configs that we do not build: (flat-config path, value of the original's
# default, i.e. the only one we support, what the option does). Anything else is refused by name.
UNSUPPORTED_OPTIONS = (
    ("backbone", "stylegan2", "the tri-plane decoder; stylegan3-r and raw_planes are experiments"),
    ("img_channels", 3, "image channels"),
    ("has_view_cond", False, "a view-direction input to the tri-plane MLP (tri_plane.has_view_cond)"),
    ("posenc_period_len", 0, "Fourier features of the points in the tri-plane MLP (tri_plane.posenc_period_len)"),
    ("bg_model.fmm.enabled", False, "factorised multiplicative modulation of the sphere background"),
    ("bg_model.output_channels", 4, "channels of the sphere background's output (rgb + density)"),
    ("bg_model.coord_dim", 4, "coordinates of the sphere background's input (x', y', z', 1/r)"),
)


def _option(config: Mapping[str, Any], path: str, default: Any) -> Any:
    node: Any = config
    for part in path.split("."):
        if not isinstance(node, Mapping) or node.get(part) is None:
            return default
        node = node[part]
    return node


def check_supported(config: Mapping[str, Any]) -> None:
    """Raise ValueError naming the first option of an original hyperparameter dict that we cannot build."""
    for path, supported, what in UNSUPPORTED_OPTIONS:
        if path.startswith("bg_model.") and _option(config, "bg_model.type", None) != "sphere":
            continue
        value = _option(config, path, supported)
        if value != supported:
            raise ValueError(f"original option {path} = {value!r} is not supported (only {supported!r}): {what}")
    bg_type = _option(config, "bg_model.type", None)
    if bg_type not in (None, "sphere", "plane"):
        raise ValueError(f"original option bg_model.type = {bg_type!r} is not supported (null, 'sphere' or 'plane')")


def generator_config(config: Mapping[str, Any]) -> GeneratorConfig:
    """GeneratorConfig equivalent to an original hyperparameter dict."""
    check_supported(config)
    bg = config.get("bg_model") or {}
    sphere = SphereBackgroundConfig()
    if bg.get("type") == "sphere":
        sphere = SphereBackgroundConfig(
            num_blocks=bg.get("num_blocks", sphere.num_blocks), channel_base=bg.get("cbase", sphere.channel_base),
            channel_max=bg.get("cmax", sphere.channel_max),
            posenc_period_len=bg.get("posenc_period_len", sphere.posenc_period_len),
            num_steps=bg.get("num_steps", sphere.num_steps), start=bg.get("start", sphere.start),
        )
    return GeneratorConfig(
        z_dim=_require(config, "z_dim"),
        w_dim=_require(config, "w_dim"),
        c_dim=_require(config, "c_dim"),
        mapping_layers=_require(config, "mapping_layers"),
        image_resolution=_require(config, "img_resolution"),
        patch_resolution=_require(config, "patch_resolution"),
        triplane_resolution=_require(config, "triplane_res"),
        triplane_channels=_require(config, "triplane_feat_dim"),
        channel_base=_require(config, "G_channel_base"),
        channel_max=_require(config, "G_channel_max"),
        use_noise=config.get("use_noise", True),
        conv_clamp=config.get("G_conv_clamp", 256),
        mlp_hidden=_require(config, "mlp_hid_dim"),
        mlp_layers=_require(config, "mlp_n_layers"),
        camera_cond=config.get("camera_cond", False),
        camera_cond_drop_p=config.get("camera_cond_drop_p", 0.0),
        camera_cond_noise_std=config.get("camera_cond_noise_std", 0.0),
        mean_camera_pose=tuple(config.get("mean_camera_pose", (0.0, math.pi / 2, 0.0))),
        nerf_noise_std_init=config.get("nerf_noise_std_init", 1.0),
        nerf_noise_kimg_growth=config.get("nerf_noise_kimg_growth", 5000.0),
        camera=CameraConfig(
            fov=_require(config, "fov"), radius=_require(config, "radius"),
            ray_start=_require(config, "ray_start"), ray_end=_require(config, "ray_end"),
            cube_scale=_require(config, "cube_scale"), distribution=config.get("camera_dist", "custom"),
        ),
        render=RenderConfig(
            num_ray_steps=_require(config, "num_ray_steps"),
            white_back=config.get("white_back", False), last_back=config.get("last_back", False),
            density_shift=config.get("density_shift", 0.0), clamp_mode=config.get("clamp_mode", "softplus"),
            background=bg.get("type"), sphere=sphere,
        ),
    )


def discriminator_config(config: Mapping[str, Any]) -> DiscriminatorConfig:
    """DiscriminatorConfig equivalent to an original hyperparameter dict.

    The original builds D for the patch size with ``num_additional_start_blocks`` stride-1 blocks in front;
    our D derives that count from (virtual) image resolution / input resolution.
    """
    patches = config.get("patch_enabled", True)
    input_res = _require(config, "patch_resolution") if patches else _require(config, "img_resolution")
    extra = _require(config, "num_additional_start_blocks")
    return DiscriminatorConfig(
        image_resolution=input_res * 2**extra,
        input_resolution=input_res,
        c_dim=_require(config, "c_dim"),
        channel_base=_require(config, "D_channel_base"),
        channel_max=_require(config, "D_channel_max"),
        conv_clamp=config.get("D_conv_clamp", 256),
        num_fp16_res=config.get("D_num_fp16_res", 4),
        mbstd_group_size=_require(config, "mbstd_group_size"),
        mbstd_num_channels=config.get("mbstd_num_channels", 1),
        hyper_mod=config.get("hyper_mod", True),
        hyper_mod_dim=config.get("hyper_mod_dim", 512),
        patch_params_cond=config.get("patch_params_cond", True),
        camera_cond=config.get("D_camera_cond", False),
        camera_cond_raw=config.get("D_camera_cond_raw", False),
        camera_cond_drop_p=config.get("D_camera_cond_drop_p", 0.0),
    )


def model_config(config: Mapping[str, Any]) -> ModelConfig:
    """The full ModelConfig (networks + patch distribution) of an original hyperparameter dict."""
    g = generator_config(config)
    d = discriminator_config(config)
    patch = PatchConfig(
        image_resolution=g.image_resolution, resolution=g.patch_resolution,
        enabled=config.get("patch_enabled", True), min_scale=config.get("patch_min_scale"),
        max_scale=config.get("patch_max_scale", 1.0), group_size=d.mbstd_group_size,
    )
    return ModelConfig(name=config.get("name", "original"), generator=g, discriminator=d, patch=patch)


def _convert(state: Mapping[str, Tensor], prefixes: tuple[tuple[str, str], ...], what: str) -> dict[str, Tensor]:
    """Rename original keys to ours; check and drop the original's constant buffers."""
    fir = fir_filter_2d()
    out = {}
    for key, value in state.items():
        if key.endswith("resample_filter"):
            if tuple(value.shape) != tuple(fir.shape) or not torch.allclose(value.float(), fir, atol=1e-7):
                raise ValueError(f"{what}: {key} is not the [1, 3, 3, 1] resampling filter this model uses")
            continue
        if key.endswith(FOURIER_COEFS_SUFFIX):
            n = value.numel()
            if value.ndim != 1 or not torch.allclose(value.float(), log_fourier_coefficients(2**n), rtol=1e-6):
                raise ValueError(f"{what}: {key} differs from the frequencies π·2^j/2^{n} (j < {n}) this model uses")
            continue
        for old, new in prefixes:
            if key.startswith(old):
                out[new + key[len(old):]] = value
                break
        else:
            raise ValueError(f"{what}: unexpected original key {key!r}")
    return out


def convert_generator_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Original G (or G_ema) state dict → our Generator's key names."""
    return _convert(state, G_KEY_PREFIXES, "generator")


def convert_discriminator_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Original D state dict → our Discriminator's key names."""
    return _convert(state, D_KEY_PREFIXES, "discriminator")


def from_original(
    config: Mapping[str, Any],
    g_state: Mapping[str, Tensor] | None = None,
    d_state: Mapping[str, Tensor] | None = None,
) -> tuple[Generator, Discriminator]:
    """Build (Generator, Discriminator) from an original hyperparameter dict; load original-key state dicts.

    Without states the networks are randomly initialised with that architecture. Missing, unexpected or
    mis-shaped keys raise ValueError naming them. Both networks are returned in eval mode.
    """
    cfg = model_config(config)
    G = Generator(cfg.generator)
    D = Discriminator(cfg.discriminator)
    if config.get("num_ws") is not None and config["num_ws"] != G.num_ws:
        raise ValueError(f"config declares num_ws {config['num_ws']}, the architecture has {G.num_ws}")
    if g_state is not None:
        load_state_strict(G, convert_generator_state(g_state), "generator")
    if d_state is not None:
        load_state_strict(D, convert_discriminator_state(d_state), "discriminator")
    return G.eval(), D.eval()
