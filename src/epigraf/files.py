"""Writing files so that a crash or kill never leaves a torn one under the final name, and saying so
plainly when the disk is full; the one cache folder."""

from __future__ import annotations

import errno
import functools
import logging
import math
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TEMPORARY_SUFFIX = ".tmp"
CACHE_ENV = "EPIGRAF_CACHE"
_OLD_CACHE_ENV = "EPIGRAF_CACHE_DIR"  # the metrics cache's own variable before the two caches shared one

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """epigraf's cache (the built-in dataset, real-image metric statistics): ``$EPIGRAF_CACHE``, else
    ``$XDG_CACHE_HOME/epigraf``, else ``~/.cache/epigraf``.

    The old ``EPIGRAF_CACHE_DIR`` is still read when ``EPIGRAF_CACHE`` is not set, with a deprecation warning.
    """
    value = os.environ.get(CACHE_ENV) or os.environ.get(_OLD_CACHE_ENV)
    if os.environ.get(_OLD_CACHE_ENV):
        _warn_old_cache_env(os.environ[_OLD_CACHE_ENV], bool(os.environ.get(CACHE_ENV)))
    if value:
        return Path(value).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "epigraf"


@functools.cache
def _warn_old_cache_env(value: str, ignored: bool) -> None:
    """Once per process and value: the user-facing rename of EPIGRAF_CACHE_DIR."""
    log.warning("%s is deprecated and will be removed: use %s%s", _OLD_CACHE_ENV, CACHE_ENV,
                f" (set too, so {_OLD_CACHE_ENV}={value} is ignored)" if ignored else f"={value}")


def default_file_mode() -> int:
    """The mode ``open()`` gives a new file: 0o666 less the process umask (0o644 under the usual 022)."""
    mask = os.umask(0o022)  # reading the umask means setting it; it is put back at once
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yields ``<path>.tmp`` to write; when the block succeeds it is renamed onto ``path`` (atomic on one file
    system), when it raises it is removed. Only a killed process leaves the ``.tmp`` file behind.

    The file gets the usual mode of new files: writers with their own (safetensors creates 0600) would
    otherwise make a run's network files the only ones other users cannot read."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + TEMPORARY_SUFFIX)
    try:
        yield tmp
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def free_bytes(folder: str | os.PathLike[str]) -> int:
    """Bytes available to this user on the file system holding ``folder``."""
    return shutil.disk_usage(folder).free


def no_space_error(path: str | os.PathLike[str], needed_bytes: int) -> OSError:
    """The error for a write of about ``needed_bytes`` to ``path`` that does not fit on its device."""
    free_mb = free_bytes(Path(path).parent) / 2**20
    return OSError(errno.ENOSPC, f"no space left on device (needed ~{needed_bytes / 2**20:.1f} MB at {path}, "
                                 f"{free_mb:.1f} MB free)")


def check_free_space(path: str | os.PathLike[str], needed_bytes: int) -> None:
    """Raise ``no_space_error`` before writing about ``needed_bytes`` to ``path`` if they do not fit."""
    if free_bytes(Path(path).parent) < needed_bytes:
        raise no_space_error(path, needed_bytes)


def check_output_path(out: str | os.PathLike[str], inputs: list[str | os.PathLike[str]], overwrite: bool,
                      flag: str = "--force") -> None:
    """Refuse to write ``out`` over one of ``inputs`` (always), or over any existing file unless
    ``overwrite`` (the user's ``flag``)."""
    out = Path(out)
    if not out.exists():
        return
    for source in inputs:
        if Path(source).exists() and out.samefile(source):
            raise ValueError(f"the output {out} is the input {source}: choose another output path")
    if not overwrite:
        raise ValueError(f"{out} already exists: pass {flag} to replace it")


def strict_json(x: Any) -> Any:
    """``x`` (nested dicts, lists, numbers) with every non-finite float as None, so that ``json.dumps`` writes
    standard JSON (it would write the non-standard ``NaN`` and ``Infinity``)."""
    if isinstance(x, dict):
        return {k: strict_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [strict_json(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
