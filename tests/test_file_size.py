"""No module under ``src/epigraf`` is longer than CONTRIBUTING.md's limit unless it says why at its top.

A long file usually holds two jobs; the reason, when there is one, is written in the module docstring as a
line starting with ``Long file:``.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "epigraf"
LINE_LIMIT = 450
REASON_MARK = "Long file:"


def oversized_modules(root: Path, limit: int = LINE_LIMIT) -> list[str]:
    """Modules over ``limit`` lines whose docstring gives no ``Long file:`` reason, as 'path (lines)'."""
    found = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        lines = text.count("\n") + (0 if text.endswith("\n") or not text else 1)
        if lines <= limit:
            continue
        docstring = ast.get_docstring(ast.parse(text)) or ""
        if REASON_MARK not in docstring:
            found.append(f"{path.relative_to(root.parent)} ({lines} lines)")
    return found


def test_no_module_is_over_the_limit_without_a_reason() -> None:
    oversized = oversized_modules(SRC)
    assert not oversized, f"over {LINE_LIMIT} lines with no '{REASON_MARK}' reason in the docstring: {oversized}"


def test_the_check_sees_a_long_module_and_accepts_its_reason(tmp_path: Path) -> None:
    body = "x = 1\n" * (LINE_LIMIT + 1)
    (tmp_path / "long.py").write_text('"""A module."""\n' + body)
    (tmp_path / "explained.py").write_text(f'"""A module.\n\n{REASON_MARK} one table, kept whole."""\n' + body)
    (tmp_path / "short.py").write_text(body[: 6 * 10])
    assert oversized_modules(tmp_path) == [f"{tmp_path.name}/long.py ({LINE_LIMIT + 2} lines)"]
