"""Progress bars with an ETA for the long loops of the commands (feature extraction, metrics, videos).

Library functions take ``progress: bool`` (off by default, so the training loop and tests stay quiet) and
wrap their batch loops in ``track``. The bar goes to stderr; the CLI routes log lines through tqdm
(``logging_redirect_tqdm``) so they print above the bar instead of being glued onto it.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")
log = logging.getLogger(__name__)


def bar_can_draw(stream: IO[str] | None = None) -> bool:
    """False when ``stream`` (default stderr) is a terminal that reports zero columns: tqdm then prints nothing at
    all, so callers fall back to log lines. Not a terminal (a file, a pipe): True, tqdm writes its lines there."""
    stream = sys.stderr if stream is None else stream
    try:
        if not stream.isatty():
            return True
        return os.get_terminal_size(stream.fileno()).columns > 0
    except (AttributeError, OSError, ValueError):
        return True


def kimg_bar_format(total_kimg: float) -> str:
    """tqdm's bar format for a count of kimg: as many decimals as ``total_kimg`` needs (at least 2), so that
    --kimg 0.02 shows "0.02/0.02 kimg", not "0.00/0 kimg"."""
    total = f"{total_kimg:g}"
    decimals = max(2, len(total.split(".")[1]) if "." in total and "e" not in total else 2)
    return (f"{{l_bar}}{{bar}}| {{n:.{decimals}f}}/{{total:g}} kimg "
            "[{elapsed}<{remaining}{postfix}]")


def track(batches: Iterable[T], total: int, desc: str, unit: str = "img", enabled: bool = True,
          count: Callable[[Any], int] = len) -> Iterator[T]:
    """Yield ``batches`` unchanged while a bar counts ``count(batch)`` (its length) of ``total`` items as each one
    is done."""
    if enabled and not bar_can_draw():
        yield from _logged(batches, total, desc, unit, count)
        return
    with tqdm(total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True) as bar:
        for batch in batches:
            yield batch
            bar.update(count(batch))


def _logged(batches: Iterable[T], total: int, desc: str, unit: str, count: Callable[[Any], int]) -> Iterator[T]:
    """``track``'s fallback where no bar can be drawn: a log line at each tenth of ``total``."""
    done, next_line = 0, 0.1
    for batch in batches:
        yield batch
        done += count(batch)
        if done >= next_line * total or done >= total:
            log.info("%s: %d/%d %s", desc, done, total, unit)
            next_line = (done // (0.1 * total) + 1) * 0.1 if total else 1.0
