"""What a benchmark ran on, named the same way in every script's JSON, and how a result's JSON is written."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch

from epigraf.files import strict_json


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


def write_result(out: Path, result: dict) -> None:
    """``result`` as standard JSON (non-finite floats as null, ``epigraf.files.strict_json``) at ``out``, its
    folder made if need be; says where."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(strict_json(result), indent=1, allow_nan=False) + "\n")
    print(f"wrote {out}")
