"""What a benchmark ran on, named the same way in every script's JSON."""

from __future__ import annotations

import platform
from pathlib import Path

import torch


def device_name(device: str | torch.device) -> str:
    """The GPU's name when ``device`` runs on CUDA ("auto" on a machine with one included), else the CPU model."""
    kind = str(device)
    if kind != "cpu" and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(kind) if kind.startswith("cuda") else None)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"
