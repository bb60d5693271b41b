"""Shared test helpers: the original's equivalence fixtures (../shared/fixtures/original) and rel_err.

The fixture folder is found at ``<repo>/../shared/fixtures/original`` or at ``$EPIGRAF_FIXTURES``;
tests that need it are skipped only when that folder does not exist.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from epigraf.process_settings import flush_denormals

# As every epigraf command does, before any torch operation (so torch's worker threads inherit the flag):
# the equivalence tests against the original's fixtures then run under the setting the product uses.
flush_denormals()

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FIXTURES = REPO_ROOT.parent / "shared" / "fixtures" / "original"

# Fixture tolerance of the original's outputs (fixtures/original/README.md).
FIXTURE_TOL = 1e-4


def rel_err(ours: Tensor, ref: Tensor) -> float:
    """max|ours − ref| / max(max|ref|, 1e-6), the fixtures' per-tensor error measure."""
    ours, ref = ours.detach().double().cpu(), ref.detach().double().cpu()
    if ours.shape != ref.shape:
        raise AssertionError(f"shape {list(ours.shape)} differs from the reference {list(ref.shape)}")
    return ((ours - ref).abs().max() / ref.abs().max().clamp_min(1e-6)).item()


def _load_tensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    # Cloning moves memory-mapped, possibly unaligned storage into fresh memory (README tip).
    return {k: v.clone() for k, v in load_file(str(path)).items()}


@dataclass
class OriginalFixtures:
    """The original's tiny configuration, weights (original key names) and case tensors."""

    root: Path
    config: dict[str, Any]
    g_state: dict[str, Tensor]
    d_state: dict[str, Tensor]
    tensors: dict[str, Tensor]
    cases: dict[str, dict[str, Any]]
    tol: float = FIXTURE_TOL

    def inputs(self, case: str) -> dict[str, Tensor | None]:
        """Input argument name → tensor (None where the case passes None)."""
        return {
            arg: (self.tensors[name] if isinstance(name, str) else None)
            for arg, name in self.cases[case]["inputs"].items()
        }

    def outputs(self, case: str) -> dict[str, Tensor]:
        """Output name → reference tensor."""
        return {k: self.tensors[name] for k, name in self.cases[case]["outputs"].items()}

    def kwargs(self, case: str) -> dict[str, Any]:
        return dict(self.cases[case]["kwargs"])


def original_fixtures_root() -> Path:
    """The fixture folder; skips the calling test only when it does not exist."""
    root = Path(os.environ.get("EPIGRAF_FIXTURES", DEFAULT_FIXTURES))
    if not root.is_dir():
        pytest.skip(f"original fixtures not found at {root} (set EPIGRAF_FIXTURES)")
    return root


def load_original_set(name: str) -> OriginalFixtures:
    """One fixture set of the original (``tiny``, ``condfourier``, ``condraw``, ``bgsphere``, …)."""
    root = original_fixtures_root()
    index = json.loads((root / f"{name}_cases_public.json").read_text())
    return OriginalFixtures(
        root=root,
        config=json.loads((root / index["config"]).read_text()),
        g_state=_load_tensors(root / index["weights"]["G"]),
        d_state=_load_tensors(root / index["weights"]["D"]),
        tensors=_load_tensors(root / index["tensors"]),
        cases={case["name"]: case for case in index["cases"]},
    )


@pytest.fixture(scope="session")
def original_fixtures() -> OriginalFixtures:
    return load_original_set("tiny")


@pytest.fixture(name="rel_err")
def rel_err_fixture():
    """The ``rel_err`` function, for tests that prefer fixtures to importing conftest."""
    return rel_err


@pytest.fixture
def torch_generator() -> torch.Generator:
    """A CPU generator with a fixed seed, fresh per test."""
    return torch.Generator().manual_seed(1234)
