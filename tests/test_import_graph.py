"""No import cycles inside ``src/epigraf``, and package ``__init__`` files by the rule of CONTRIBUTING.md.

The graph is read from the source with ``ast``; nothing is imported. Every import statement of a module is an
edge: at module level, in nested blocks (``if TYPE_CHECKING:`` included: a name imported for an annotation is a
dependency of the design even though the import does not run), in class bodies, and inside functions. Lazy
imports count too, on purpose: deferring an import hides a cycle from Python but not from the reader, since the
two modules still need each other (issue 23's circle checkpoint → train.snapshot → compat → checkpoint was
closed by a lazy import). Lazy imports of third-party packages (torch after the allocator setting, skimage) are
outside the graph, so deferring a heavy or optional dependency stays free.

``from epigraf.x import y`` names the module ``epigraf.x.y`` where that file exists, else the module
``epigraf.x``; relative imports are resolved against the importing module's package. Importing
``epigraf.a.b`` also runs ``epigraf/a/__init__.py``, so m gets an edge to every package above its target that
is not a package m itself lives in (those are being imported already when m runs). ``importlib`` calls (the
CLI's commands) are not statements and are not seen.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


# ----------------------------------------------------------------------------------------------- the graph


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name → file, for every ``.py`` under ``root / package`` (``__init__.py`` → the package)."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement of a module, wherever it stands (module docstring)."""
    return [node for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)]


def _resolve_relative(module: str, is_package: bool, level: int, name: str | None) -> str:
    package = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        package = package[: len(package) - (level - 1)]
    return ".".join(package + ([name] if name else []))


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module → the modules of ``package`` it imports (see the module docstring)."""
    files = module_files(root, package)
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        targets: set[str] = set()
        for stmt in imports(ast.parse(path.read_text(), str(path))):
            if isinstance(stmt, ast.Import):
                targets.update(alias.name for alias in stmt.names)
                continue
            base = stmt.module or ""
            if stmt.level:
                base = _resolve_relative(module, _is_package(path), stmt.level, stmt.module)
            for alias in stmt.names:
                submodule = f"{base}.{alias.name}"
                targets.add(submodule if submodule in files else base)
        edges = set()
        for target in targets:
            if target not in files:
                continue  # outside the package (torch, numpy, the standard library)
            edges.add(target)
            parts = target.split(".")
            for i in range(1, len(parts)):  # importing a.b.c runs a/__init__ and a/b/__init__ first
                above = ".".join(parts[:i])
                if not (module == above or module.startswith(above + ".")):  # unless m is already inside
                    edges.add(above)
        edges.discard(module)
        graph[module] = edges & files.keys()
    return graph


def find_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """One cycle [m1, m2, …, m1] through each strongly connected component with more than one module,
    shortest first from the component's first module in sorted order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan's algorithm, recursive: one frame per module at most
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return sorted(_shortest_cycle(graph, component) for component in components)


def _shortest_cycle(graph: Mapping[str, Iterable[str]], component: list[str]) -> list[str]:
    """Breadth-first inside the component from its first module back to itself."""
    start, members = component[0], set(component)
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph.get(v, ())):
                if w == start:
                    back = [v]  # v, its parent, …, start
                    while back[-1] != start:
                        back.append(parent[back[-1]])
                    return [*reversed(back), start]
                if w in members and w not in parent:
                    parent[w] = v
                    following.append(w)
        frontier = following
    raise AssertionError(f"{component} is not strongly connected")


# ----------------------------------------------------------------------------------------------- the tests


def test_no_import_cycles_in_epigraf():
    cycles = find_cycles(import_graph(SRC, "epigraf"))
    assert not cycles, "import cycles:\n" + "\n".join(" → ".join(c) for c in cycles)


def test_a_two_module_cycle_is_found():
    assert find_cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b", "a"]]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_cycles_are_read_from_the_source(tmp_path):
    """Module-level, TYPE_CHECKING, class-body, function-level, relative and package imports all form edges."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import B\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import A\nB = 1\n")
    (pkg / "c.py").write_text("def late():\n    from pkg import d\n")
    (pkg / "d.py").write_text("import pkg.c\n")
    (pkg / "sub" / "__init__.py").write_text("from pkg.sub.e import E\n")
    (pkg / "sub" / "e.py").write_text("from ..f import F\nE = 1\n")
    (pkg / "f.py").write_text("class F:\n    from pkg.sub import e\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.a"}
    assert graph["pkg.c"] == {"pkg.d"} and graph["pkg.d"] == {"pkg.c"}
    assert graph["pkg.f"] == {"pkg.sub", "pkg.sub.e"}  # importing pkg.sub.e runs pkg/sub/__init__ first
    assert graph["pkg.sub.e"] == {"pkg.f"}  # its own package's __init__ is already being imported
    assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.a"], ["pkg.c", "pkg.d", "pkg.c"],
                                  ["pkg.f", "pkg.sub.e", "pkg.f"]]


# -------------------------------------------------------------------------------- package __init__ files


def _package_inits() -> list[Path]:
    return sorted(p for p in (SRC / "epigraf").rglob("__init__.py") if p.parent != SRC / "epigraf")


@pytest.mark.parametrize("init", _package_inits(), ids=lambda p: p.parent.relative_to(SRC).as_posix())
def test_package_init_is_empty_or_re_exports_its_modules(init):
    """CONTRIBUTING.md: a package's __init__.py is empty, or a docstring, imports from the package's own modules
    and an ``__all__`` that lists exactly the names imported."""
    text = init.read_text()
    if not text.strip():
        return
    package = ".".join(init.parent.relative_to(SRC).parts)
    tree = ast.parse(text)
    body = tree.body
    assert ast.get_docstring(tree), f"{package}/__init__.py re-exports without a docstring saying how to use them"
    imported: set[str] = set()
    declared: set[str] | None = None
    for stmt in body[1:]:
        if isinstance(stmt, ast.ImportFrom) and stmt.level == 0 and (stmt.module or "").startswith(package + "."):
            imported.update(alias.asname or alias.name for alias in stmt.names)
        elif (isinstance(stmt, ast.Assign) and [getattr(t, "id", None) for t in stmt.targets] == ["__all__"]):
            declared = set(ast.literal_eval(stmt.value))
        else:
            pytest.fail(f"{package}/__init__.py line {stmt.lineno}: only imports from {package}.* and __all__")
    declared = declared or set()
    assert declared == imported, (f"{package}.__all__ differs from what it imports: missing "
                                  f"{sorted(imported - declared)}, extra {sorted(declared - imported)}")
