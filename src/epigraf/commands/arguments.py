"""Flags that several commands share, read through one parser each (``epigraf.devices``)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
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
