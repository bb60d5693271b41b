"""Our network checkpoint: one safetensors file, no pickles, no code.

Tensors are stored under ``G_ema.``, ``G.`` and ``D.`` prefixes (G and D optional); the resolved
ModelConfig is stored as JSON in the file's metadata, so the file alone rebuilds the networks.
Training state (optimisers, counters, RNG) lives in a separate file written by the trainer; the names of
both files in a run folder, and the words for a torch file that weights-only loading refuses, are defined
here, for the trainer and the original's readers alike (docs/snapshot-format.md).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from epigraf.config import ModelConfig, from_dict
from epigraf.files import atomic_write
from epigraf.nn.discriminator import Discriminator
from epigraf.nn.generator import Generator
from epigraf.nn.size_limit import planned_state_dicts
from epigraf.nn.state import check_state_fits, load_state_strict

log = logging.getLogger(__name__)

FORMAT = "epigraf-checkpoint-1"
NETWORKS = ("G_ema", "G", "D")

# A run's snapshot at nimg images shown: the network checkpoint and the training state beside it.
NETWORK_PATTERN = "network-{nimg:010d}.safetensors"
STATE_PATTERN = "training-state-{nimg:010d}.pt"
STATE_RE = re.compile(r"training-state-(\d{10})\.pt$")


@dataclass
class Checkpoint:
    """Networks rebuilt from a checkpoint. ``G_ema`` is the one to render with."""

    config: ModelConfig
    G_ema: Generator
    G: Generator | None = None
    D: Discriminator | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(
    path: str | os.PathLike,
    config: ModelConfig,
    G_ema: Generator,
    G: Generator | None = None,
    D: Discriminator | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write networks + config atomically (temporary file, then rename). Returns the path."""
    path = Path(path)
    tensors = {}
    for name, net in (("G_ema", G_ema), ("G", G), ("D", D)):
        if net is not None:
            tensors.update({f"{name}.{k}": v.detach().to("cpu", copy=True).contiguous()
                            for k, v in net.state_dict().items()})
    meta = {
        "format": FORMAT,
        "config": json.dumps(dataclasses.asdict(config)),
        "metadata": json.dumps(metadata or {}),
    }
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def _hint_for_foreign_file(path: Path) -> str:
    """Where to go instead, for the files people pass as a checkpoint by mistake (judged by name and content)."""
    with path.open("rb") as f:
        head = f.read(4)
    if (match := STATE_RE.search(path.name)) is not None:
        network = path.with_name(NETWORK_PATTERN.format(nimg=int(match.group(1))))
        return (f"; it is a training state (optimisers and counters, for --resume): the networks are in "
                f"{network.name} beside it")
    if path.suffix == ".pkl" or head[:1] == b"\x80":  # every pickle of protocol 2 or newer starts with 0x80
        return (f"; an original EpiGRAF snapshot must first be converted: "
                f"epigraf import {path} --out {path.stem}.safetensors")
    if head == b"PK\x03\x04":  # torch.save writes a zip archive
        return "; it is a torch.save file: pass a run's network-*.safetensors or a file written by epigraf import"
    return ""


def weights_only_refusal(err: BaseException) -> str:
    """Why torch's weights-only loader refused a file, in one line and without torch's advice to retry with
    ``weights_only=False`` (which would execute whatever the file holds)."""
    for line in str(err).splitlines():
        if "WeightsUnpickler error:" in line:
            # Its first sentence says what was refused; the rest advises loading it anyway.
            return line.split("WeightsUnpickler error:", 1)[1].strip().split(". ")[0].rstrip(".")
    return "it holds something other than tensors, numbers, strings and containers"


def _read_metadata(path: Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path} is not an epigraf checkpoint (not a readable safetensors file: {err})"
                         f"{_hint_for_foreign_file(path)}") from err


def _json_field(path: Path, meta: dict[str, str], field_name: str, default: str | None = None) -> Any:
    if field_name not in meta and default is None:
        raise ValueError(f"{path}: the metadata has no {field_name!r} field")
    try:
        return json.loads(meta.get(field_name, default))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: metadata field {field_name!r} is not valid JSON ({err})") from err


def _all_finite(t: torch.Tensor) -> bool:
    # A sum is NaN/Inf when any element is, and an order of magnitude cheaper than isfinite().all() on CPU
    # (benchmarks/RESULTS.md, "checking loaded weights for NaN and Inf"); only a non-finite sum (or an overflow
    # of huge finite values) needs the exact check.
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def check_weights(path: Path, name: str, state: dict[str, torch.Tensor], planned: dict[str, torch.Tensor]) -> None:
    """Refuse a tensor whose dtype is not the model's kind (integer for float), or that holds NaN or Inf;
    other float types are converted on loading, with a notice."""
    what = f"{path} {name}"
    wrong_kind = [f"{k} ({v.dtype}, model {planned[k].dtype})" for k, v in state.items()
                  if v.is_floating_point() != planned[k].is_floating_point()]
    if wrong_kind:
        raise ValueError(f"{what}: tensors of the wrong type: {', '.join(wrong_kind[:6])}")
    converted = [k for k, v in state.items() if v.dtype != planned[k].dtype]
    if converted:
        log.info("%s: converting %d tensors (e.g. %s, %s) to the model's %s", what, len(converted), converted[0],
                 state[converted[0]].dtype, planned[converted[0]].dtype)
    non_finite = [k for k, v in state.items() if v.is_floating_point() and not _all_finite(v)]
    if non_finite:
        raise ValueError(f"{what}: non-finite weights (NaN or Inf) in {', '.join(non_finite[:6])}"
                         f"{f' and {len(non_finite) - 6} more' if len(non_finite) > 6 else ''}; the file is "
                         "corrupt or its training diverged (use an earlier snapshot)")


def _directory_message(path: Path, shown: int = 5) -> str:
    """A directory given as a checkpoint: say so, and name the checkpoints in it (the newest last)."""
    found = sorted(p.name for p in path.glob("*.safetensors") if p.is_file())
    if not found:
        return f"{path} is a directory, not a checkpoint file, and holds no .safetensors checkpoint"
    listed = ", ".join(found[-shown:])
    more = f"{len(found) - shown} more, then " if len(found) > shown else ""
    return (f"{path} is a directory, not a checkpoint file; give one of its {len(found)} checkpoints "
            f"({more}{listed}), e.g. {path / found[-1]}")


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild the networks stored in ``path`` (eval mode, on ``device``).

    Everything is checked before the networks are allocated: the metadata JSON and every config field
    (ValueError naming the file and the field), the networks' size (``planned_state_dicts``), every tensor's
    name, shape and dtype, and that weights are finite."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(_directory_message(path))
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    meta = _read_metadata(path)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not an epigraf checkpoint: format {meta.get('format')!r}"
                         f"{_hint_for_foreign_file(path)}")
    try:
        config = from_dict(ModelConfig, _json_field(path, meta, "config"))
    except ValueError as err:
        raise ValueError(f"{path}: the stored config is unreadable: {err}") from err
    metadata = _json_field(path, meta, "metadata", default="{}")
    if not isinstance(metadata, dict):
        raise ValueError(f"{path}: metadata field 'metadata' must be a JSON object")
    planned = planned_state_dicts(config, str(path))
    tensors = load_file(str(path), device="cpu")
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        name, _, sub = key.partition(".")
        if name not in NETWORKS:
            raise ValueError(f"{path}: unexpected tensor {key!r}")
        groups.setdefault(name, {})[sub] = value
    if "G_ema" not in groups:
        raise ValueError(f"{path}: the checkpoint holds no G_ema weights")
    for name, state in groups.items():
        expected = planned["D" if name == "D" else "G"]
        check_state_fits(expected, state, f"{path} {name}")
        check_weights(path, name, state, expected)

    def build(name: str, net: nn.Module) -> nn.Module:
        load_state_strict(net, groups[name], f"{path} {name}")
        return net.to(device).eval()

    return Checkpoint(
        config=config,
        G_ema=build("G_ema", Generator(config.generator)),
        G=build("G", Generator(config.generator)) if "G" in groups else None,
        D=build("D", Discriminator(config.discriminator)) if "D" in groups else None,
        metadata=metadata,
    )
