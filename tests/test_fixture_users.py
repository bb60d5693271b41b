"""A clone without ../shared passes the test suite: every test finds the original's fixtures through conftest,
which skips when they are absent.

`.ci/run` shows the rest: its second pass reruns, with ``EPIGRAF_FIXTURES`` pointing at a missing folder, every
test that looked for the fixtures in the first pass, and they must all skip or pass.
"""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
# A path to the fixtures built by hand: the "shared" folder, or its fixtures/original sub-folder.
BUILT_BY_HAND = re.compile(r"""["']shared["']|shared/fixtures|["']fixtures["']\s*/\s*["']original["']""")


def test_no_test_builds_the_fixture_path_itself():
    offenders = [f"{path.name}:{n}" for path in sorted(TESTS.glob("*.py"))
                 if path.name not in ("conftest.py", Path(__file__).name)
                 for n, line in enumerate(path.read_text().splitlines(), 1) if BUILT_BY_HAND.search(line)]
    assert not offenders, ("use conftest's original_fixtures_root() (skips without the fixtures) or the "
                           f"original_fixtures fixture instead of building the path: {offenders}")
