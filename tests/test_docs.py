"""The documentation resolves inside the repository: every relative link of the README and docs/ names a file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# [text](target): a target with a file suffix or a folder, so that maths like E[s](k) is not a link.
LINK = re.compile(r"\]\(([^)#\s]*(?:\.[a-z]+|/))(?:#[^)]*)?\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    targets = [t for t in LINK.findall(page.read_text()) if not re.match(r"[a-z]+://", t)]
    missing = [t for t in targets if not (page.parent / t).exists()]
    assert not missing, f"{page.name} links to missing files: {missing}"


def test_the_method_page_has_every_section_the_code_cites():
    """Citations read `docs/method.md §x.y`; each cited number is a heading of the page."""
    headings = set(re.findall(r"^#+ (\d+(?:\.\d+)?)\.? ", (REPO / "docs" / "method.md").read_text(), re.MULTILINE))
    cited = set()
    for path in [*(REPO / "src").rglob("*.py"), *(REPO / "tests").glob("*.py"), REPO / "README.md"]:
        for group in re.findall(r"method\.md`? (§[\d.§–/, -]+)", path.read_text()):
            cited.update(re.findall(r"\d+(?:\.\d+)?", group))
    assert cited <= headings, f"cited but not on docs/method.md: {sorted(cited - headings)}"
