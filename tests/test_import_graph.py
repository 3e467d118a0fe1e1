"""studio/ and workers/ import each other in one direction only: no module reaches itself through its imports,
counting imports inside functions too (they run as soon as the function does)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("studio", "workers")


def modules(root: Path = ROOT) -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imported(node: ast.AST, package: str) -> list[str]:
    """Dotted names an import statement may load: for ``from X import a``, X.a (a submodule) and X."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            parent = package.split(".")[:len(package.split(".")) - node.level + 1]
            base = ".".join(parent + ([base] if base else []))
        return [f"{base}.{alias.name}" for alias in node.names] + [base]
    return []


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the project modules it imports, at module level or inside a function."""
    mods = modules(root)
    graph = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = _imported(node, package)
            submodules = [n for n in names[:-1] if n in mods] if isinstance(node, ast.ImportFrom) else []
            for target in submodules or names:  # `from pkg import mod` loads mod; `from mod import f`, mod
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest cycle through each strongly connected group of modules, e.g. [a, b, a]."""
    found, seen = [], set()
    for start in sorted(graph):
        if start in seen:
            continue
        paths, visited = [[start]], {start}  # breadth first: the shortest way back to start
        while paths:
            path = paths.pop(0)
            nxt = sorted(graph[path[-1]])
            if start in nxt:
                found.append(path + [start])
                seen.update(path)
                break
            for m in nxt:
                if m not in visited:
                    visited.add(m)
                    paths.append(path + [m])
    return found


def test_the_graph_sees_function_level_imports():
    graph = import_graph()
    assert "workers.train" in graph["workers.tasks"]  # imported inside the task's body
    assert "studio.db" in graph["studio.jobs"]


# No group is left to tolerate: the training methods build on workers.arguments, which imports neither them nor
# workers.train, and workers.train looks the methods up.
KNOWN: list[set[str]] = []


def test_the_methods_and_the_runner_share_arguments_without_importing_each_other():
    graph = import_graph()
    methods = [m for m in graph if m.startswith("workers.methods")]
    assert methods and not [m for m in methods if "workers.train" in graph[m]]
    assert "workers.train" not in graph["workers.arguments"] and not any(
        m.startswith("workers.methods") for m in graph["workers.arguments"])


def test_the_dataset_reader_never_imports_the_format_registry():
    graph = import_graph()
    assert "studio.datasets.formats" not in graph["studio.datasets.read"]  # formats -> read, one way


def test_no_import_cycles():
    found = [c for c in cycles(import_graph()) if not any(set(c) <= group for group in KNOWN)]
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_a_cycle_is_reported_with_its_path():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c", "a"]]


def test_the_adapters_tab_never_imports_the_training_stack():
    graph = import_graph()
    assert not {m for m in graph["studio.ui.adapters_tab"] if m.startswith("workers.")}
