"""Shared test helpers: the original's equivalence fixtures (../shared/fixtures/original) and rel_err.

The fixture folder is found at ``<repo>/../shared/fixtures/original`` or at ``$EPIGRAF_FIXTURES``;
tests that need it are skipped only when that folder does not exist.
"""

from __future__ import annotations

import json
import os
import sys
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

# Who looked for the fixtures (original_fixtures_dir): test node ids, pytest fixtures, and a count of lookups.
_FIXTURE_USERS: set[str] = set()
_FIXTURE_LOOKUPS = [0]
RECORD_ENV = "EPIGRAF_RECORD_FIXTURE_USERS"  # write the ids of the tests that read the fixtures to this file
ONLY_ENV = "EPIGRAF_ONLY_TESTS_FROM"  # run only the test ids listed in this file


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


def original_fixtures_dir() -> Path:
    """Where the fixture folder is looked for (it may not exist): ``$EPIGRAF_FIXTURES`` or ``../shared/…``.

    Every test that reads the fixtures finds them through this function (tests/test_fixture_users.py checks
    that no test builds the path itself), so ``EPIGRAF_FIXTURES=<missing folder>`` shows what a clone without
    ``../shared`` sees. With ``$EPIGRAF_RECORD_FIXTURE_USERS`` set to a file, the ids of the tests that asked
    are written there at the end of the session (for a lookup at collection time, e.g. in a parametrisation,
    the test module's path): `.ci/run` reruns them with the fixtures hidden.
    """
    _FIXTURE_LOOKUPS[0] += 1
    current = os.environ.get("PYTEST_CURRENT_TEST")
    if current:
        _FIXTURE_USERS.add(current.rsplit(" (", 1)[0])
    else:
        caller = Path(sys._getframe(1).f_code.co_filename)
        if caller.parent == Path(__file__).parent and caller.name.startswith("test_"):
            _FIXTURE_USERS.add(caller.relative_to(REPO_ROOT).as_posix())
    return _fixtures_path()


def _fixtures_path() -> Path:
    return Path(os.environ.get("EPIGRAF_FIXTURES", DEFAULT_FIXTURES))


def original_fixtures_root() -> Path:
    """The fixture folder; skips the calling test only when it does not exist."""
    root = original_fixtures_dir()
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


@pytest.fixture(scope="session", autouse=True)
def caches_in_a_temporary_folder(tmp_path_factory) -> Path:
    """No test writes into the user's caches: epigraf's (the built-in dataset, real-image metric statistics) and
    every other XDG cache point into the session's temporary folder, for subprocesses too."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EPIGRAF_CACHE", str(cache / "epigraf"))
        patch.delenv("EPIGRAF_CACHE_DIR", raising=False)
        patch.setenv("XDG_CACHE_HOME", str(cache / "xdg"))
        yield cache


@pytest.fixture
def torch_generator() -> torch.Generator:
    """A CPU generator with a fixed seed, fresh per test."""
    return torch.Generator().manual_seed(1234)


# -------------------------------------------------- a clone without ../shared: .ci/run's second, focused pass


class _FixtureUseRecorder:
    """A pytest fixture that looks for the original's fixtures makes every test that requests it a user.

    Registered as a plugin (pytest_configure), not as a conftest hook: a conftest's pytest_fixture_setup is not
    called for session-scoped fixtures such as ``original_fixtures``.
    """

    def __init__(self) -> None:
        self.fixtures: set[tuple[str, str]] = set()  # (baseid, name) of the fixtures that looked

    @pytest.hookimpl(hookwrapper=True)
    def pytest_fixture_setup(self, fixturedef, request):
        before = _FIXTURE_LOOKUPS[0]
        yield
        if _FIXTURE_LOOKUPS[0] > before:
            self.fixtures.add((fixturedef.baseid, fixturedef.argname))

    def pytest_sessionfinish(self, session, exitstatus):
        record = os.environ.get(RECORD_ENV)
        if record:
            users = _FIXTURE_USERS | {
                item.nodeid for item in session.items
                if any(name in item.fixturenames and item.nodeid.startswith(baseid) for baseid, name in self.fixtures)}
            Path(record).write_text("".join(f"{nodeid}\n" for nodeid in sorted(users)))


def pytest_configure(config):
    config.pluginmanager.register(_FixtureUseRecorder(), "epigraf-fixture-users")


def pytest_collection_modifyitems(config, items):
    only = os.environ.get(ONLY_ENV)
    if not only:
        return
    wanted = set(Path(only).read_text().split("\n")) - {""}

    def listed(nodeid: str) -> bool:
        """By id, the same test with other parameters (fixture-dependent ids), or its whole module."""
        return bool({nodeid, nodeid.split("[")[0], nodeid.split("::")[0]} & wanted) or any(
            w.split("[")[0] == nodeid.split("[")[0] for w in wanted)

    keep = [item for item in items if listed(item.nodeid)]
    config.hook.pytest_deselected(items=[item for item in items if not listed(item.nodeid)])
    items[:] = keep


def pytest_report_header(config):
    only = os.environ.get(ONLY_ENV)
    fixtures = os.environ.get("EPIGRAF_FIXTURES")
    root = _fixtures_path()
    lines = [f"original fixtures: {root}" + ("" if root.is_dir() else " (absent: the tests that need them skip)")]
    if only:
        lines.append(f"running only the tests listed in {only} (${ONLY_ENV})" + (f", EPIGRAF_FIXTURES={fixtures}"
                                                                                   if fixtures else ""))
    return lines
