"""Flags that several commands share, read through one parser each (``epigraf.devices``)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from epigraf.devices import DEVICE_CHOICES, parse_device, parse_port

T = TypeVar("T")


def argparse_type(parse: Callable[[str], T]) -> Callable[[str], T]:
    """``parse`` as an argparse ``type``: its ValueError becomes argparse's one-line usage error."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    convert.__name__ = parse.__name__.removeprefix("parse_")  # argparse names the type in some messages
    return convert


def add_device_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", type=argparse_type(parse_device), default="auto",
                   help=f"{DEVICE_CHOICES} (default auto: the GPU when there is one, else the CPU)")


def add_port_argument(p: argparse.ArgumentParser, default: int) -> None:
    p.add_argument("--port", type=argparse_type(parse_port), default=default,
                   help=f"TCP port (0 = any free port; default {default})")


def add_force_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help="overwrite output files that already exist")


def refuse_to_overwrite(paths: Iterable[Path], force: bool) -> None:
    """The overwrite policy of commands that write named files (import, mesh): existing outputs are kept
    unless ``--force``. Checked before any work, so a refusal costs nothing and nothing is half-replaced."""
    existing = [p for p in paths if p.exists()]
    if existing and not force:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise ValueError(f"{existing[0]} exists{more}; pass --force to overwrite")
