"""Read the original implementation's networks into state dicts under its key names, executing nothing.

``read_original_snapshot`` reads a ``network-snapshot-<kimg>.pkl`` through ``epigraf.compat.unpickler``'s
restricted unpickler, then flattens each network's module records in ``torch.nn.Module.state_dict()`` order
(docs/snapshot-format.md). ``read_original_state_dict`` reads plain state-dict files with safetensors or
torch's weights-only loader.
"""

from __future__ import annotations

import pickle
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from epigraf.checkpoint import weights_only_refusal
from epigraf.compat.unpickler import MODULE_PLACEHOLDERS, Placeholder, RestrictedUnpickler, SnapshotFormatError

__all__ = ["OriginalSnapshot", "read_original_snapshot", "read_original_state_dict"]

NETWORK_NAMES = ("G", "G_ema", "D")


@dataclass(frozen=True)
class OriginalSnapshot:
    """The contents of an original snapshot that a converter needs.

    ``G``, ``G_ema`` and ``D`` are state dicts under the original key names, in the original
    ``state_dict()`` order, with CPU tensors in their stored dtypes. ``G_ema`` is the network used for
    inference. ``augment_p`` is the ADA probability (None without an augment pipe).
    """

    G: OrderedDict[str, Tensor]
    G_ema: OrderedDict[str, Tensor]
    D: OrderedDict[str, Tensor]
    augment_p: float | None
    stats: dict[str, Any]
    training_set_kwargs: dict[str, Any]


def _module_state(node: Any, where: str) -> dict[str, Any]:
    if isinstance(node, Placeholder) and type(node) in MODULE_PLACEHOLDERS:
        state = node.state
    elif isinstance(node, dict) and node.get("type") == "class":
        state = node.get("state")
    else:
        raise SnapshotFormatError(f"'{where}' is a {type(node).__name__}, not a network module")
    if not isinstance(state, dict):
        raise SnapshotFormatError(f"'{where}' has no module state")
    return state


def _slot(state: dict[str, Any], name: str, kind: type | tuple[type, ...], where: str) -> Any:
    # A missing slot is empty, as for modules pickled before torch added it.
    value = state.get(name)
    if value is None:
        return kind[0]() if isinstance(kind, tuple) else kind()
    if not isinstance(value, kind):
        raise SnapshotFormatError(f"'{where}' has a {type(value).__name__} as {name}")
    return value


def _as_plain_tensor(value: Any, key: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise SnapshotFormatError(f"'{key}' is a {type(value).__name__}, not a tensor")
    # detach() turns a Parameter into a plain tensor on the same memory, as state_dict() does.
    return value.detach()


def _flatten(node: Any, prefix: str, out: OrderedDict[str, Tensor], where: str) -> None:
    """Append a module's state-dict entries in ``torch.nn.Module.state_dict()`` order."""
    state = _module_state(node, where)
    non_persistent = _slot(state, "_non_persistent_buffers_set", (set, frozenset), where)
    for name, value in _slot(state, "_parameters", dict, where).items():
        if value is not None:
            out[prefix + name] = _as_plain_tensor(value, prefix + name)
    for name, value in _slot(state, "_buffers", dict, where).items():
        if value is not None and name not in non_persistent:
            out[prefix + name] = _as_plain_tensor(value, prefix + name)
    for name, child in _slot(state, "_modules", dict, where).items():
        if child is not None:
            _flatten(child, f"{prefix}{name}.", out, f"{where}.{name}")


def _plain_dict(value: Any, key: str) -> dict[str, Any]:
    # Older StyleGAN-derived loops store some of these as EasyDict, which arrives as a placeholder.
    if isinstance(value, Placeholder):
        return dict(value.entries)
    if isinstance(value, dict):
        return dict(value)
    if value is None:
        return {}
    raise SnapshotFormatError(f"snapshot entry '{key}' is a {type(value).__name__}, expected a dict")


def _augment_p(pipe: Any) -> float | None:
    if pipe is None:
        return None
    p = _slot(_module_state(pipe, "augment_pipe"), "_buffers", dict, "augment_pipe").get("p")
    return None if p is None else float(p)


def read_original_snapshot(path: str | Path) -> OriginalSnapshot:
    """Read an original ``network-snapshot-*.pkl`` without executing anything from it.

    Raises :class:`UnsafePickleError` when the file references a global outside the snapshot format,
    and :class:`SnapshotFormatError` when it is not a snapshot (not a pickle, or no G/G_ema/D).
    """
    path = Path(path)
    if zipfile.is_zipfile(path):
        raise SnapshotFormatError(
            f"{path} is a zip archive (a torch.save checkpoint?), not a snapshot pickle; "
            "use read_original_state_dict for state-dict files"
        )
    with path.open("rb") as f:
        try:
            data = RestrictedUnpickler(f).load()
        except (pickle.UnpicklingError, EOFError) as err:
            raise SnapshotFormatError(f"{path} is not a readable pickle: {err}") from err
    if not isinstance(data, dict):
        raise SnapshotFormatError(f"{path} holds a {type(data).__name__}, not a snapshot dict")
    missing = [name for name in NETWORK_NAMES if name not in data]
    if missing:
        raise SnapshotFormatError(
            f"{path} is not a network snapshot: it lacks {missing} (top-level keys: {sorted(map(str, data))})"
        )
    networks: dict[str, OrderedDict[str, Tensor]] = {}
    for name in NETWORK_NAMES:
        networks[name] = OrderedDict()
        _flatten(data[name], "", networks[name], name)
    return OriginalSnapshot(
        G=networks["G"],
        G_ema=networks["G_ema"],
        D=networks["D"],
        augment_p=_augment_p(data.get("augment_pipe")),
        stats=_plain_dict(data.get("stats"), "stats"),
        training_set_kwargs=_plain_dict(data.get("training_set_kwargs"), "training_set_kwargs"),
    )


def read_original_state_dict(path: str | Path, which: str = "G_ema") -> dict[str, Tensor]:
    """Read a plain state-dict file under the original key names onto the CPU.

    ``.safetensors`` files are flat. ``.pt``/``.pth``/``.pkl`` files are read by torch's weights-only
    loader and may hold either a flat name → tensor dict, or a dict of such dicts under ``G``, ``G_ema``
    and ``D``, of which ``which`` is returned (it is ignored for flat files). Snapshot pickles are read
    by :func:`read_original_snapshot` instead.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        # load_file may memory-map the file; cloning detaches the result from it.
        return {key: value.clone() for key, value in load_file(path, device="cpu").items()}
    if suffix not in (".pt", ".pth", ".pkl"):
        raise ValueError(f"{path}: unsupported state-dict file type '{suffix}'")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError) as err:
        reason = weights_only_refusal(err) if isinstance(err, pickle.UnpicklingError) else str(err)
        raise SnapshotFormatError(
            f"{path} is not a weights-only torch file ({reason}); for a network snapshot use "
            "read_original_snapshot"
        ) from None
    if not isinstance(obj, dict):
        raise SnapshotFormatError(f"{path} holds a {type(obj).__name__}, not a state dict")
    if any(name in obj and isinstance(obj[name], dict) for name in NETWORK_NAMES):
        if which not in NETWORK_NAMES:
            raise ValueError(f"which must be one of {NETWORK_NAMES}, got {which!r}")
        if not isinstance(obj.get(which), dict):
            raise SnapshotFormatError(f"{path} has no '{which}' state dict (keys: {sorted(map(str, obj))})")
        obj = obj[which]
    return {str(key): _as_plain_tensor(value, str(key)) for key, value in obj.items()}
