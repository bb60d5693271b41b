"""The original's hyperparameters: read from a flat JSON, or recovered from the records in a snapshot pickle.

The flat format, its keys and how each is read: docs/snapshot-format.md, "The original's hyperparameters".
``read_config`` reads it from a dict or a JSON file (a ``{"config": {...}}`` wrapper is accepted);
``snapshot_hyperparameters`` recovers it from a snapshot's embedded records: the networks' constructor
arguments (``_init_kwargs``), attributes of their sub-modules (channel counts, resolutions, clamps,
minibatch-stddev grouping) and the composed experiment config the original keeps as OmegaConf objects (read as
inert data through ``epigraf.compat.unpickler``, tensors skipped; ``${a.b}`` references between its nodes are
resolved). ``networks_config`` turns the dict into our ModelConfig.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from epigraf.compat.original import model_config
from epigraf.compat.unpickler import RestrictedUnpickler, SnapshotFormatError
from epigraf.config import ModelConfig

__all__ = ["REQUIRED_KEYS", "networks_config", "read_config", "snapshot_hyperparameters"]

# Keys model_config/from_original cannot do without (the rest have defaults).
REQUIRED_KEYS = (
    "z_dim", "w_dim", "c_dim", "img_resolution", "patch_resolution", "mapping_layers", "triplane_res",
    "triplane_feat_dim", "G_channel_base", "G_channel_max", "mlp_hid_dim", "mlp_n_layers", "num_ray_steps",
    "fov", "radius", "ray_start", "ray_end", "cube_scale", "D_channel_base", "D_channel_max",
    "mbstd_group_size", "num_additional_start_blocks",
)


class _Skipped:
    """Stands for a tensor, parameter or storage: the config pass never decodes weights."""

    def __repr__(self) -> str:
        return "<tensor not read>"


def _skip(*args: Any) -> _Skipped:
    return _Skipped()


_TENSOR_GLOBALS = frozenset({
    ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
    ("torch.storage", "_load_from_bytes"),
})


class _ConfigUnpickler(RestrictedUnpickler):
    """The restricted unpickler with tensors skipped; every other global goes through its allow-list."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _TENSOR_GLOBALS:
            return _skip
        return super().find_class(module, name)


_MISSING = object()
_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_.]*)\}")


def _origin(x: Any) -> str:
    # The unpickler's inert placeholders name the class they stand for in a class attribute.
    return getattr(type(x), "origin", "") if hasattr(x, "state") and hasattr(x, "entries") else ""


def _plain(x: Any, depth: int = 0) -> Any:
    """OmegaConf/EasyDict placeholders, numpy scalars and containers → plain Python data."""
    if depth > 64:
        raise SnapshotFormatError("embedded config nested too deeply")
    origin = _origin(x)
    if origin:
        state = x.state if isinstance(x.state, dict) else {}
        if origin.endswith(("DictConfig", "ListConfig")):
            return _plain(state.get("_content"), depth + 1)
        if origin.endswith("AnyNode"):
            return _plain(state.get("_val"), depth + 1)
        if origin.endswith("EasyDict"):
            return {k: _plain(v, depth + 1) for k, v in {**(x.entries or {}), **state}.items()}
        return None
    if isinstance(x, dict):
        return {str(k): _plain(v, depth + 1) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v, depth + 1) for v in x]
    if hasattr(x, "item") and hasattr(x, "dtype"):  # numpy scalar
        return x.item()
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    return None


def _lookup(root: Any, path: str) -> Any:
    node = root
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _resolve(value: Any, root: Any, depth: int = 0) -> Any:
    """Resolve OmegaConf-style ``${a.b}`` references against the root config (unresolvable ones stay)."""
    if depth > 16:
        return value
    if isinstance(value, dict):
        return {k: _resolve(v, root, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, root, depth + 1) for v in value]
    if isinstance(value, str) and "${" in value:
        whole = _REF.fullmatch(value)
        if whole:
            target = _lookup(root, whole.group(1))
            return value if target is _MISSING else _resolve(target, root, depth + 1)

        def sub(m: re.Match) -> str:
            target = _resolve(_lookup(root, m.group(1)), root, depth + 1)
            return str(target) if isinstance(target, (bool, int, float, str)) else m.group(0)

        return _REF.sub(sub, value)
    return value


def _record_state(node: Any) -> dict[str, Any]:
    if isinstance(node, dict) and isinstance(node.get("state"), dict):
        return node["state"]
    if _origin(node) and isinstance(node.state, dict):
        return node.state
    return {}


def _class_name(node: Any) -> str:
    return node.get("class_name", "") if isinstance(node, dict) else _origin(node).rsplit(".", 1)[-1]


def _child(state: dict[str, Any], name: str) -> dict[str, Any]:
    modules = state.get("_modules")
    return _record_state(modules.get(name)) if isinstance(modules, dict) else {}


def _find(state: dict[str, Any], class_name: str) -> dict[str, Any]:
    """Depth-first: the state of the first sub-module of that class ({} if none)."""
    modules = state.get("_modules")
    for child in (modules.values() if isinstance(modules, dict) else ()):
        if child is None:
            continue
        if _class_name(child) == class_name:
            return _record_state(child)
        found = _find(_record_state(child), class_name)
        if found:
            return found
    return {}


def _root_config(node: Any) -> Any:
    """Follow OmegaConf parents up to the composed experiment config."""
    for _ in range(64):
        parent = node.state.get("_parent") if _origin(node) and isinstance(node.state, dict) else None
        if parent is None:
            return node
        node = parent
    return node


def _usable(value: Any) -> bool:
    if value is None or value is _MISSING:
        return False
    if isinstance(value, str) and "${" in value:
        return False
    return not (isinstance(value, dict) and "_target_" in value)


def _first(*values: Any) -> Any:
    return next((v for v in values if _usable(v)), _MISSING)


def _load_records(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        try:
            data = _ConfigUnpickler(f).load()
        except (pickle.UnpicklingError, EOFError) as err:
            raise SnapshotFormatError(f"{path} is not a readable pickle: {err}") from err
    if not isinstance(data, dict) or any(k not in data for k in ("G_ema", "D")):
        raise SnapshotFormatError(f"{path} is not a network snapshot")
    return data


def snapshot_hyperparameters(path: str | os.PathLike) -> dict[str, Any]:
    """The flat hyperparameter dict (docs/snapshot-format.md, "The original's hyperparameters") of a snapshot,
    read from the records embedded in it; keys that cannot be found are left out.

    Also ``r1_gamma`` when the embedded training config states a number. Nothing is executed; tensors are
    not decoded.
    """
    data = _load_records(Path(path))
    g, d = _record_state(data["G_ema"]), _record_state(data["D"])
    gk, dk = _plain(g.get("_init_kwargs")) or {}, _plain(d.get("_init_kwargs")) or {}
    cfg_node = g.get("cfg") if g.get("cfg") is not None else (g.get("_init_kwargs") or {}).get("cfg")
    root = _plain(_root_config(cfg_node)) if cfg_node is not None else {}
    gcfg = _resolve(_plain(cfg_node) or {}, root)
    dcfg = _resolve(dk.get("cfg") or _plain(d.get("cfg")) or {}, root)
    dataset = _first(gcfg.get("dataset"), (root or {}).get("dataset"))
    dataset = dataset if isinstance(dataset, dict) else {}
    camera = dataset.get("camera") if isinstance(dataset.get("camera"), dict) else {}
    training = (root or {}).get("training") if isinstance((root or {}).get("training"), dict) else {}
    patch = _first(gcfg.get("patch"), training.get("patch"))
    patch = patch if isinstance(patch, dict) else {}
    tri = gcfg.get("tri_plane") if isinstance(gcfg.get("tri_plane"), dict) else {}
    mlp_cfg = tri.get("mlp") if isinstance(tri.get("mlp"), dict) else {}

    synth = _child(g, "synthesis")
    decoder = _child(synth, "tri_plane_decoder")
    mlp = _child(synth, "tri_plane_mlp")
    mapping = _child(g, "mapping")
    mapping_kwargs = gk.get("mapping_kwargs") if isinstance(gk.get("mapping_kwargs"), dict) else {}
    synth_layer = _find(decoder, "SynthesisLayer")
    mbstd = _find(d, "MinibatchStdLayer")
    epilogue = _find(d, "DiscriminatorEpilogue")
    epilogue_kwargs = _plain(epilogue.get("_init_kwargs")) or {}
    hyper = _child(d, "hyper_mod_mapping")
    dims = _plain(mlp.get("dims")) if mlp else None

    extra_blocks = _MISSING
    d_virtual, d_input = _plain(d.get("img_resolution")), dk.get("img_resolution")
    if isinstance(d_virtual, int) and isinstance(d_input, int) and d_input > 0 and d_virtual >= d_input:
        extra_blocks = int(round(math.log2(d_virtual / d_input)))
    img_res = _first(_plain(g.get("img_resolution")), gk.get("img_resolution"))
    patch_res = _first(_plain(synth.get("train_resolution")), patch.get("resolution"), d_input)
    bg = gcfg.get("bg_model")

    found: dict[str, Any] = {
        "name": _first(dataset.get("name"), _lookup(root, "model.name")),
        "z_dim": _first(_plain(g.get("z_dim")), gk.get("z_dim")),
        "w_dim": _first(_plain(g.get("w_dim")), gk.get("w_dim")),
        "c_dim": _first(_plain(g.get("c_dim")), gk.get("c_dim")),
        "img_resolution": img_res,
        "patch_resolution": patch_res,
        "patch_enabled": _first(patch.get("enabled")),
        "img_channels": _first(_plain(g.get("img_channels")), gk.get("img_channels")),
        "mapping_layers": _first(_plain(mapping.get("num_layers")), mapping_kwargs.get("num_layers"),
                                 gcfg.get("map_depth")),
        "num_ws": _first(_plain(g.get("num_ws"))),
        "G_channel_base": _first(gk.get("channel_base")),
        "G_channel_max": _first(gk.get("channel_max")),
        "backbone": _first(gcfg.get("backbone")),
        "use_noise": _first(gcfg.get("use_noise"), _plain(synth_layer.get("use_noise"))),
        "G_conv_clamp": _first(_plain(synth_layer.get("conv_clamp"))),
        "triplane_res": _first(tri.get("res"), _plain(decoder.get("out_resolution"))),
        "triplane_feat_dim": _first(tri.get("feat_dim")),
        "triplane_out_channels": _first(_plain(decoder.get("out_channels"))),
        "mlp_hid_dim": _first(mlp_cfg.get("hid_dim"), dims[1] if isinstance(dims, list) and len(dims) > 2 else None),
        "mlp_n_layers": _first(mlp_cfg.get("n_layers"), len(dims) - 1 if isinstance(dims, list) else None),
        "has_view_cond": _first(tri.get("has_view_cond")),
        "posenc_period_len": _first(tri.get("posenc_period_len")),
        "num_ray_steps": _first(gcfg.get("num_ray_steps")),
        "ray_start": _first(camera.get("ray_start")),
        "ray_end": _first(camera.get("ray_end")),
        "fov": _first(camera.get("fov")),
        "radius": _first(camera.get("radius")),
        "camera_dist": _first(camera.get("dist")),
        "cube_scale": _first(dataset.get("cube_scale")),
        "white_back": _first(dataset.get("white_back")),
        "last_back": _first(dataset.get("last_back")),
        "density_shift": _first(gcfg.get("density_shift")),
        "clamp_mode": _first(gcfg.get("clamp_mode")),
        "nerf_noise_std_init": _first(gcfg.get("nerf_noise_std_init")),
        "nerf_noise_kimg_growth": _first(gcfg.get("nerf_noise_kimg_growth")),
        "bg_model": bg if isinstance(bg, dict) and bg.get("type") is not None else None,
        "camera_cond": _first(mapping_kwargs.get("camera_cond"), gcfg.get("camera_cond")),
        "camera_cond_drop_p": _first(mapping_kwargs.get("camera_cond_drop_p"), gcfg.get("camera_cond_drop_p")),
        "camera_cond_noise_std": _first(mapping_kwargs.get("camera_cond_noise_std"),
                                        gcfg.get("camera_cond_noise_std")),
        "D_channel_base": _first(dk.get("channel_base")),
        "D_channel_max": _first(dk.get("channel_max")),
        "D_conv_clamp": _first(epilogue_kwargs.get("conv_clamp")),
        "mbstd_group_size": _first(_plain(mbstd.get("group_size")), dcfg.get("mbstd_group_size")),
        "mbstd_num_channels": _first(_plain(mbstd.get("num_channels"))),
        "num_additional_start_blocks": _first(extra_blocks, dcfg.get("num_additional_start_blocks")),
        "hyper_mod": _first(dcfg.get("hyper_mod")),
        "hyper_mod_dim": _first(_plain(hyper.get("w_dim"))),
        "patch_params_cond": _first(patch.get("patch_params_cond")),
        "D_camera_cond": _first(dcfg.get("camera_cond")),
        "D_camera_cond_raw": _first(dcfg.get("camera_cond_raw")),
        "D_camera_cond_drop_p": _first(dcfg.get("camera_cond_drop_p")),
        "D_cmap_dim": _first(_plain(epilogue.get("cmap_dim"))),
        "patch_min_scale": _first(patch.get("min_scale_trg"),
                                  patch_res / img_res if isinstance(patch_res, int) and isinstance(img_res, int)
                                  else None),
        "patch_max_scale": _first(patch.get("max_scale")),
        "r1_gamma": _first(training.get("gamma")),
    }
    out = {k: v for k, v in found.items() if v is not _MISSING}
    if not isinstance(out.get("r1_gamma"), (int, float)) or isinstance(out.get("r1_gamma"), bool):
        out.pop("r1_gamma", None)
    if out.get("bg_model") is None:
        out["bg_model"] = None
    return out


def read_config(config: Mapping[str, Any] | str | os.PathLike) -> dict[str, Any]:
    """A flat hyperparameter dict from a dict or a JSON file; a JSON object that holds it under ``"config"``
    is unwrapped."""
    if isinstance(config, Mapping):
        data: Any = dict(config)
    else:
        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(f"config not found: {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from err
    if isinstance(data, dict) and isinstance(data.get("config"), dict):
        data = data["config"]
    if not isinstance(data, dict):
        raise ValueError("the hyperparameter config must be a JSON object (the format is described in "
                         "docs/snapshot-format.md, \"The original's hyperparameters\")")
    return data


def networks_config(hyper: Mapping[str, Any]) -> ModelConfig:
    """The ModelConfig of a flat hyperparameter dict, with its ``r1_gamma`` when it states one; ValueError naming
    the required keys it lacks."""
    missing = [k for k in REQUIRED_KEYS if k not in hyper]
    if missing:
        raise ValueError(f"cannot build the networks: no value for {', '.join(missing)}; pass --config "
                         "(the original's hyperparameter JSON) or --preset")
    cfg = model_config(hyper)
    gamma = hyper.get("r1_gamma")
    if isinstance(gamma, (int, float)) and not isinstance(gamma, bool):
        cfg = dataclasses.replace(cfg, r1_gamma=float(gamma))
    return cfg
