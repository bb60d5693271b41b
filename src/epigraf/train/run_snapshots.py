"""A run's snapshot files: networks (our safetensors checkpoint) + a separate training-state file; the run folder.

A snapshot at ``cur_nimg`` images is the pair ``network-<nimg>.safetensors`` and
``training-state-<nimg>.pt``; the state file is written last, so a pair is complete iff the state file
exists, and a failed state write removes the network file it would have completed. Both writes are atomic
(temporary file, then rename), so a killed run never leaves a torn file; it may leave a ``*.tmp`` file of an
unfinished write, which resuming removes.
The state file holds only tensors, numbers, strings and containers and is read with ``weights_only=True``.
"""

from __future__ import annotations

import errno
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from epigraf.checkpoint import NETWORK_PATTERN, STATE_PATTERN, STATE_RE, weights_only_refusal
from epigraf.files import TEMPORARY_SUFFIX, atomic_write, check_free_space, no_space_error


def network_path(run_dir: Path, nimg: int) -> Path:
    return run_dir / NETWORK_PATTERN.format(nimg=nimg)


def state_path(run_dir: Path, nimg: int) -> Path:
    return run_dir / STATE_PATTERN.format(nimg=nimg)


def save_state(path: Path, state: dict[str, Any]) -> None:
    with atomic_write(path) as tmp:
        torch.save(state, tmp)


def tensor_bytes(obj: Any) -> int:
    """Bytes of every tensor in nested dicts, lists and tuples (what a snapshot of them needs on disk)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def _is_disk_full(err: BaseException) -> bool:
    """True for the ways a full disk surfaces: ENOSPC, safetensors' wrapped os error 28, and torch's zip
    writer noticing a short write ("unexpected pos")."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return True
    return "No space left on device" in str(err) or "unexpected pos" in str(err)


def write_snapshot(run_dir: Path, nimg: int, write_network: Callable[[Path], object], state: dict[str, Any],
                   needed_bytes: int) -> None:
    """Write the pair for ``nimg``: ``write_network(path)`` first, then ``state``.

    Refuses up front when the run folder's device has less than ``needed_bytes`` free. Any failure removes
    the network file (never a network without its training state) and raises OSError naming the path:
    "no space left on device (needed ~N MB at PATH …)" for a full disk, the cause otherwise."""
    network, state_file = network_path(run_dir, nimg), state_path(run_dir, nimg)
    check_free_space(network, needed_bytes)
    try:
        write_network(network)
        save_state(state_file, state)
    except (OSError, RuntimeError, SafetensorError) as err:
        network.unlink(missing_ok=True)
        if _is_disk_full(err):
            raise no_space_error(network, needed_bytes) from err
        raise OSError(f"cannot write the snapshot {state_file.name} in {run_dir}: {err}") from err


# What a training writes into its run folder; --force deletes these (and nothing else) to start afresh.
RUN_FILE_PATTERNS = ("network-*.safetensors", "training-state-*.pt", "*.jsonl", "options*.json", "config.json",
                     "reals.png", "fakes-*.png", "video-*", "events.out.tfevents.*", f"*{TEMPORARY_SUFFIX}")


def prepare_run_dir(run_dir: Path, force: bool) -> None:
    """Create ``run_dir`` for a new training. A folder that already holds a run's files is refused (a new run
    would mix its snapshots and logs with the old one's, and ``--resume latest`` could pick a stale
    snapshot) unless ``force``, which deletes those files first."""
    run_dir.mkdir(parents=True, exist_ok=True)
    previous = sorted({p for pattern in RUN_FILE_PATTERNS for p in run_dir.glob(pattern) if p.is_file()})
    if previous and not force:
        raise ValueError(f"the run folder {run_dir} already holds a run ({len(previous)} files, e.g. "
                         f"{previous[0].name}): pass --resume latest to continue it, --force to start afresh "
                         "(deleting them), or another --run")
    for path in previous:
        path.unlink()


def remove_unfinished_writes(run_dir: Path) -> list[Path]:
    """Delete the ``*.tmp`` files a killed run left (each as large as a snapshot); returns what it removed."""
    removed = [p for p in run_dir.glob(f"*{TEMPORARY_SUFFIX}") if p.is_file()]
    for path in removed:
        path.unlink()
    return removed


def load_state(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"training state not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f"{path} is not an epigraf training state: {weights_only_refusal(err)}") from None
    except Exception as err:  # torch raises several types for foreign or torn files
        raise ValueError(f"{path} is not a readable epigraf training state: {err}") from err


def latest_snapshot(run_dir: Path) -> tuple[Path, Path] | None:
    """(network, state) of the newest complete snapshot in ``run_dir``, or None."""
    found = sorted((int(m.group(1)), p) for p in run_dir.glob("training-state-*.pt") if (m := STATE_RE.search(p.name)))
    for nimg, state in reversed(found):
        network = network_path(run_dir, nimg)
        if network.is_file():
            return network, state
    return None


def resolve_resume(resume: str, run_dir: Path | None, out_dir: Path) -> tuple[Path, Path]:
    """``--resume latest`` (newest snapshot of ``run_dir``, else of the newest run under ``out_dir``) or a path
    to a training-state file (its network file is the sibling with the same image count)."""
    if resume != "latest":
        state = Path(resume)
        m = STATE_RE.search(state.name)
        if m is None:
            raise ValueError(f"--resume expects 'latest' or a training-state-<nimg>.pt file, got {resume!r}")
        network = network_path(state.parent, int(m.group(1)))
        if not network.is_file():
            raise FileNotFoundError(f"the network file for {state.name} is missing: {network}")
        if not state.is_file():
            raise FileNotFoundError(f"training state not found: {state}")
        return network, state
    runs = sorted((p for p in out_dir.glob("*") if p.is_dir()), reverse=True)
    candidates = [run_dir] if run_dir is not None else runs
    for candidate in candidates:
        snap = latest_snapshot(candidate)
        if snap is not None:
            return snap
    where = run_dir if run_dir is not None else f"any run under {out_dir}"
    raise FileNotFoundError(f"--resume latest: no complete snapshot in {where}")
