"""Import the original's checkpoints into ours (docs/method.md §12.3): snapshot pickles and plain state-dict files.

    from epigraf.compat.importer import import_original, load_original
    ckpt = load_original("network-snapshot-025000.pkl")          # networks in memory, nothing written
    import_original("network-snapshot-025000.pkl", "ffhq512.safetensors")

Nothing from the source file is executed: snapshots are read by ``epigraf.compat.unpickler``'s restricted
unpickler (an unexpected global raises ``UnsafePickleError`` naming it), state-dict files by safetensors or
torch's weights-only loader, tensors stored on a GPU are loaded on the CPU.

Where the hyperparameters come from (first that applies):

1. ``config``: the original's flat hyperparameter JSON (a dict or a path; the format is described in
   docs/snapshot-format.md, "The original's hyperparameters"; a file that holds it under ``"config"`` is
   accepted too);
2. ``preset``: one of our presets (``epigraf.config.PRESETS``), for the paper's released checkpoints;
3. for snapshot pickles, the records embedded in the file (``epigraf.compat.hyperparameters``).

Plain state-dict files carry no hyperparameters, so they need ``config`` or ``preset``. In every case the
state dicts must fit the architecture exactly (missing, unexpected and mis-shaped keys are named).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from epigraf.checkpoint import Checkpoint, save_checkpoint
from epigraf.compat.hyperparameters import networks_config, read_config, snapshot_hyperparameters
from epigraf.compat.original import convert_discriminator_state, convert_generator_state
from epigraf.compat.snapshot_reader import read_original_snapshot, read_original_state_dict
from epigraf.compat.unpickler import SnapshotFormatError
from epigraf.config import PRESETS, ModelConfig, from_dict
from epigraf.config import preset as make_preset
from epigraf.nn.discriminator import Discriminator
from epigraf.nn.generator import Generator
from epigraf.nn.size_limit import planned_state_dicts
from epigraf.nn.state import load_state_strict

__all__ = ["import_original", "load_original"]

SNAPSHOT_SUFFIXES = (".pkl", ".pickle")
STATE_DICT_SUFFIXES = (".safetensors", ".pt", ".pth")


def _with_mean_pose(cfg: ModelConfig, g_state: Mapping[str, Tensor]) -> ModelConfig:
    """Store the checkpoint's mean camera pose in the config too, so config and buffer agree."""
    pose = g_state.get("mapping.mean_camera_pose")
    if pose is None or pose.numel() != 3:
        return cfg
    values = tuple(float(v) for v in pose.float().tolist())
    return dataclasses.replace(cfg, generator=dataclasses.replace(cfg.generator, mean_camera_pose=values))


def _generator(cfg: ModelConfig, state: Mapping[str, Tensor], what: str, num_ws: Any = None) -> Generator:
    G = Generator(cfg.generator)
    if isinstance(num_ws, int) and num_ws != G.num_ws:
        raise ValueError(f"the config declares num_ws {num_ws}, the architecture has {G.num_ws}")
    load_state_strict(G, convert_generator_state(state), what)
    return G.eval()


def _kind(state: Mapping[str, Tensor]) -> str:
    if any(k.startswith(("mapping.", "synthesis.")) for k in state):
        return "G"
    if any(k.startswith(("b4.", "scalar_enc.", "hyper_mod_mapping.")) for k in state):
        return "D"
    return "?"


def _read_state_dict_file(path: Path) -> tuple[dict[str, Tensor], dict[str, Tensor] | None, dict[str, Tensor] | None]:
    """(G_ema, G or None, D or None) from a flat generator state dict or a {G, G_ema, D} file."""
    g_ema = read_original_state_dict(path, "G_ema")
    if _kind(g_ema) != "G":
        raise ValueError(f"{path} does not hold a generator state dict under the original key names")
    try:
        d = read_original_state_dict(path, "D")
    except SnapshotFormatError:
        d = None
    if d is not None and _kind(d) == "G":  # a flat file: every `which` returns the same generator
        return g_ema, None, None
    try:
        g = read_original_state_dict(path, "G")
    except SnapshotFormatError:
        g = None
    return g_ema, g, d


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    if hasattr(x, "tolist"):
        return _jsonable(x.tolist())
    return str(x)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _is_snapshot(path: Path) -> bool:
    return path.suffix.lower() in SNAPSHOT_SUFFIXES and not zipfile.is_zipfile(path)


def load_original(
    source: str | os.PathLike,
    *,
    config: Mapping[str, Any] | str | os.PathLike | None = None,
    preset: str | None = None,
) -> Checkpoint:
    """Read an original snapshot (``.pkl``) or state-dict file (``.safetensors``/``.pt``/``.pth``, or a
    torch zip saved as ``.pkl``) into our networks, on the CPU, in eval mode. Nothing is written.

    config / preset: where the hyperparameters come from (module docstring); at most one.
    ``metadata`` records the source, how the config was found, and the snapshot's training stats.
    """
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"original checkpoint not found: {path}")
    if config is not None and preset is not None:
        raise ValueError("give either a config or a preset, not both")
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    metadata: dict[str, Any] = {"imported_from": str(path), "source_sha256": _sha256(path)}
    hyper: dict[str, Any] | None = None
    if _is_snapshot(path):
        snap = read_original_snapshot(path)
        g_ema, g, d = snap.G_ema, snap.G, snap.D
        metadata.update(source_format="original-snapshot", stats=_jsonable(snap.stats),
                        augment_p=snap.augment_p, training_set_kwargs=_jsonable(snap.training_set_kwargs))
        if config is None and preset is None:
            hyper = snapshot_hyperparameters(path)
            metadata["config_source"] = "snapshot"
    elif path.suffix.lower() in (*STATE_DICT_SUFFIXES, *SNAPSHOT_SUFFIXES):
        g_ema, g, d = _read_state_dict_file(path)
        metadata["source_format"] = "original-state-dict"
        if config is None and preset is None:
            raise ValueError(f"{path} holds only weights: pass --config (the original's hyperparameter JSON) or "
                             f"--preset ({', '.join(PRESETS)})")
    else:
        raise ValueError(f"{path}: unsupported file type '{path.suffix}' (expected .pkl, .safetensors, .pt, .pth)")

    if config is not None:
        hyper = read_config(config)
        metadata["config_source"] = "config" if isinstance(config, Mapping) else f"config:{Path(config).name}"
    if hyper is not None:
        try:
            cfg = networks_config(hyper)
        except TypeError as err:
            raise ValueError(f"{path}: a hyperparameter has the wrong type: {err}") from None
        num_ws = hyper.get("num_ws")
    else:
        assert preset is not None
        cfg, num_ws = make_preset(preset), None
        metadata["config_source"] = f"preset:{preset}"
    cfg = _with_mean_pose(cfg, g_ema)
    # Hyperparameters from a file decide the allocation: check every field and the networks' size first.
    where = f"{path} (architecture from {metadata['config_source']})"
    try:
        from_dict(ModelConfig, dataclasses.asdict(cfg))
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    planned_state_dicts(cfg, where)
    try:
        G_ema = _generator(cfg, g_ema, "G_ema", num_ws)
        G = _generator(cfg, g, "G") if g is not None else None
        D = None
        if d is not None:
            D = Discriminator(cfg.discriminator)
            load_state_strict(D, convert_discriminator_state(d), "D")
            D.eval()
    except ValueError as err:
        raise ValueError(f"{err} (the architecture came from {metadata['config_source']}; does it describe "
                         "this checkpoint?)") from err
    return Checkpoint(config=cfg, G_ema=G_ema, G=G, D=D, metadata=metadata)


def import_original(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    config: Mapping[str, Any] | str | os.PathLike | None = None,
    preset: str | None = None,
) -> Checkpoint:
    """``load_original`` + ``save_checkpoint(out, ...)`` with G_ema, G and D (those present). Returns the
    in-memory checkpoint; ``metadata["path"]`` is not added — ``out`` is what was written."""
    ckpt = load_original(source, config=config, preset=preset)
    save_checkpoint(out, ckpt.config, ckpt.G_ema, ckpt.G, ckpt.D, metadata=ckpt.metadata)
    return ckpt
