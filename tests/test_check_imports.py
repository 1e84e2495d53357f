"""The checker's modules point one way: no import circles inside impls/testing (a package's
__init__ counts: importing a submodule runs it), and the library never imports the benchmarks."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "impls" / "testing"


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module an import statement of the file names, at any depth (lazy imports too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def _graph() -> dict[str, set[str]]:
    files = {_module(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for module, path in files.items():
        named = _imports(path)
        # importing a.b.c runs a/__init__ and a/b/__init__ first
        parents = {".".join(n.split(".")[:i]) for n in named for i in range(1, n.count(".") + 1)}
        graph[module] = {n for n in named | parents if n in files and n != module}
    return graph


def _circle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for successor in sorted(graph[node]):
            if state.get(successor) == 1:
                return path[path.index(successor) :] + [successor]
            if successor not in state and (found := visit(successor)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circles_in_the_checker():
    assert _circle(_graph()) is None, " -> ".join(_circle(_graph()) or [])


def test_the_circle_finder_finds_one():
    assert _circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_library_never_imports_the_benchmarks():
    for path in PACKAGE.rglob("*.py"):
        assert not {n for n in _imports(path) if n == "bench" or n.startswith("bench.")}, path
