"""Writing files so that a crash or kill never leaves a torn one under the final name."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TEMPORARY_SUFFIX = ".tmp"


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
