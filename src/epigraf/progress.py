"""Progress bars with an ETA for the long loops of the commands (feature extraction, metrics, videos).

Library functions take ``progress: bool`` (off by default, so the training loop and tests stay quiet) and
wrap their batch loops in ``track``. The bar goes to stderr; the CLI routes log lines through tqdm
(``logging_redirect_tqdm``) so they print above the bar instead of being glued onto it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def track(batches: Iterable[T], total: int, desc: str, unit: str = "img", enabled: bool = True,
          count: Callable[[Any], int] = len) -> Iterator[T]:
    """Yield ``batches`` unchanged while a bar counts ``count(batch)`` (its length) of ``total`` items as each one
    is done."""
    with tqdm(total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True) as bar:
        for batch in batches:
            yield batch
            bar.update(count(batch))
