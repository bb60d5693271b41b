"""The one reading of a user's ``--device`` (every command) and ``--port`` (the viewer) values.

Checked up front, so a plain mistake ("cuda" on a CPU-only torch, a typo, a port past 65535) is one
clear line instead of a traceback from deep inside the first ``.to(device)`` or ``bind``.
"""

from __future__ import annotations

import torch

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"
MAX_PORT = 65535


def parse_device(name: str) -> torch.device:
    """``name`` → an available torch device; ``auto`` is the first GPU when there is one, else the CPU.

    Raises ValueError for a name torch does not know, a device type epigraf does not run on, or a device
    this machine (or this torch build) does not have; the message leaves naming the flag to the caller.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"{name!r} is not a device; use {DEVICE_CHOICES}") from None
    if device.type == "cuda":
        if torch.version.cuda is None and torch.version.hip is None:
            raise ValueError(f"{name}: this torch {torch.__version__} is a CPU-only build; "
                             "use --device cpu, or install a CUDA build of torch")
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"{name}: no CUDA device is visible on this machine; use --device cpu")
        if device.index is not None and device.index >= count:
            raise ValueError(f"{name}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"{name}: Apple's MPS is not available here; use --device cpu")
    elif device.type != "cpu":
        raise ValueError(f"{name}: epigraf runs on {DEVICE_CHOICES}, not {device.type}")
    return device


def parse_port(text: str) -> int:
    """A TCP port number 0–65535 (0 = let the system pick a free one)."""
    try:
        port = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number; use 0 to {MAX_PORT} (0 = any free port)") from None
    if not 0 <= port <= MAX_PORT:
        raise ValueError(f"{port} is out of range; use 0 to {MAX_PORT} (0 = any free port)")
    return port
