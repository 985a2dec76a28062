"""The shape of the source tree: layers that import one way, modules that never import each
other in a loop, and no grab-bag files or functions.

Packages stack as models < data < train < launch (configs describe runs and may name anything):
a module imports only from its own layer and the ones below it, and no chain of imports, those
inside functions included, leads from a module back to itself. Sizes are measured with `ast`:
a function's length excludes its docstring, and data tables are listed in TABLES with a reason.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("models", "data", "train", "launch")
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 60
# Files that are data tables rather than code: size limits do not apply.
TABLES = {
    "models/hf_tables.py": "parameter-name maps of every Hugging Face architecture",
}
# Functions that are a table written as code.
TABLE_FUNCTIONS = {
    "configs/": "a config's get_config lists its settings, one line each",
}


def _sources():
    for package in (*LAYERS, "configs", "scripts"):
        yield from sorted((ROOT / package).rglob("*.py"))


def _relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _function_lines(node) -> int:
    lines = node.end_lineno - node.lineno + 1
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        if isinstance(body[0].value.value, str):
            lines -= body[0].end_lineno - body[0].lineno + 1
    return lines


def _imported_packages(tree) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_layers_import_downwards_only():
    wrong = []
    for path in _sources():
        package = _relative(path).split("/")[0]
        if package not in LAYERS:
            continue
        above = set(LAYERS[LAYERS.index(package) + 1 :])
        for name in sorted(_imported_packages(ast.parse(path.read_text())) & above):
            wrong.append(f"{_relative(path)} imports {name}")
    assert not wrong, "imports that run upwards:\n" + "\n".join(wrong)


def test_files_and_functions_stay_small():
    too_big = []
    for path in _sources():
        name = _relative(path)
        if name in TABLES:
            continue
        text = path.read_text()
        if len(text.splitlines()) > MAX_FILE_LINES:
            too_big.append(f"{name}: {len(text.splitlines())} lines")
        if any(name.startswith(prefix) for prefix in TABLE_FUNCTIONS):
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = _function_lines(node)
                if lines > MAX_FUNCTION_LINES:
                    too_big.append(f"{name}:{node.lineno} {node.name}: {lines} lines")
    assert not too_big, "split these:\n" + "\n".join(too_big)


def test_the_size_measure_can_fail(tmp_path):
    source = "def f():\n    '''doc\n    more'''\n" + "    x = 1\n" * 61
    (node,) = ast.parse(source).body
    assert _function_lines(node) == 62
    assert "train" in _imported_packages(ast.parse("from train.loop import train"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph(sources: dict[str, ast.Module], packages: set[str]) -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere in its body (functions included); a
    name is the longest module prefix of what the import statement names."""

    def module(name: str) -> str | None:
        while name and name not in sources:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, tree in sources.items():
        here = name if name in packages else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.update(module(alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join([*parent, base] if base else parent)
                found.update(module(f"{base}.{alias.name}") for alias in node.names)
        graph[name] = found - {None, name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` as [a, b, ..., a], or None (a depth-first search)."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_module_imports_itself_through_others():
    paths = [p for p in _sources() if _relative(p).split("/")[0] != "scripts"]
    sources = {_module_name(p): ast.parse(p.read_text()) for p in paths}
    packages = {_module_name(p) for p in paths if p.name == "__init__.py"}
    cycle = _cycle(_import_graph(sources, packages))
    assert cycle is None, "an import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_can_fail():
    sources = {
        "train": ast.parse(""),
        "train.a": ast.parse("def f():\n    from train.b import g\n"),
        "train.b": ast.parse("from . import c\n"),
        "train.c": ast.parse("import train.a\n"),
    }
    graph = _import_graph(sources, {"train"})
    assert graph == {
        "train": set(),
        "train.a": {"train.b"},
        "train.b": {"train.c"},
        "train.c": {"train.a"},
    }
    assert _cycle(graph) == ["train.a", "train.b", "train.c", "train.a"]
    assert _cycle({**graph, "train.c": set()}) is None
