"""studio/ and workers/ import each other in one direction only: no module reaches itself through its imports,
counting imports inside functions too (they run as soon as the function does); studio/ reaches workers/ only to
submit to the queue, and never reaches the training stack (torch, transformers, peft, trl, bitsandbytes,
accelerate): the UI process runs without it."""
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


def _statements(tree: ast.AST, module_level: bool):
    """Every node of ``tree``; with ``module_level``, none inside a function (what importing the module runs)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(child for child in ast.iter_child_nodes(node) if not module_level or not isinstance(
            child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))


def outside_imports(root: Path = ROOT, module_level: bool = False) -> dict[str, set[str]]:
    """module -> the top-level packages from outside the project it imports (``torch`` for ``import torch.nn``)."""
    found = {}
    for name, path in modules(root).items():
        tops = set()
        for node in _statements(ast.parse(path.read_text(), str(path)), module_level):
            if isinstance(node, ast.Import):
                tops |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                tops.add(node.module.split(".")[0])
        found[name] = tops - set(PACKAGES)
    return found


def import_graph(root: Path = ROOT, module_level: bool = False) -> dict[str, set[str]]:
    """module -> the project modules it imports, at module level or inside a function (only at module level with
    ``module_level``)."""
    mods = modules(root)
    graph = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in _statements(ast.parse(path.read_text(), str(path)), module_level):
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


# ---- studio/ is torch-free at run time ----------------------------------------------------------------------------

TRAINING_STACK = {"torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate"}
# the one way from studio/ into workers/: submitting to the queue (the tasks' bodies run in a worker, so only what
# importing these modules runs counts for the UI process)
QUEUE_SUBMIT = {("studio.jobs", "workers.queue"), ("studio.jobs", "workers.tasks")}


def arrows_into_workers(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    return {(m, t) for m, targets in graph.items() if m.startswith("studio") for t in targets
            if t.startswith("workers")}


def training_stack_paths(root: Path = ROOT) -> dict[str, list[str]]:
    """studio module -> the shortest import path from it to the training stack, e.g. [studio.x, studio.y, torch].

    Inside studio/ every import counts, function-level ones too. Across the queue submit only what importing the
    queue and the tasks modules runs counts; any other arrow into workers/ is followed whole."""
    full, loading = import_graph(root), import_graph(root, module_level=True)
    outside, outside_loading = outside_imports(root), outside_imports(root, module_level=True)
    found = {}
    for start in sorted(m for m in full if m.startswith("studio")):
        paths, seen = [([start], True)], {(start, True)}
        while paths and start not in found:
            path, whole = paths.pop(0)
            here = path[-1]
            heavy = sorted((outside if whole else outside_loading)[here] & TRAINING_STACK)
            if heavy:
                found[start] = path + heavy[:1]
                break
            for nxt in sorted(full[here] if whole else loading[here]):
                state = (nxt, nxt.startswith("studio") or (whole and (here, nxt) not in QUEUE_SUBMIT))
                if state not in seen:
                    seen.add(state)
                    paths.append((path + [nxt], state[1]))
    return found


def test_the_graph_counts_function_level_and_relative_imports_of_outside_packages():
    assert "huey" in outside_imports()["workers.queue"]
    loading = import_graph(module_level=True)
    assert "workers.train" in import_graph()["workers.tasks"] and "workers.train" not in loading["workers.tasks"]
    assert "studio.render" in import_graph()["studio.datasets.stats"]  # `from .. import render` in a function


def test_studio_reaches_workers_only_to_submit_to_the_queue():
    arrows = arrows_into_workers(import_graph()) - QUEUE_SUBMIT
    assert not arrows, "studio/ imports workers/ beyond the queue submit:\n" + "\n".join(
        f"{a} -> {b}" for a, b in sorted(arrows))


def test_nothing_under_studio_reaches_the_training_stack():
    found = training_stack_paths()
    assert not found, "the UI process would load the training stack:\n" + "\n".join(
        " -> ".join(path) for path in found.values())


def test_a_path_to_the_training_stack_is_reported_through_studio_and_not_through_a_tasks_body(tmp_path):
    for folder, files in {"studio": {"__init__.py": "", "jobs.py": "import workers.tasks\n",
                                     "a.py": "def f():\n    from . import b\n", "b.py": "import torch.nn\n"},
                          "workers": {"__init__.py": "", "queue.py": "", "train.py": "import torch\n",
                                      "tasks.py": "def run():\n    from . import train\n"}}.items():
        (tmp_path / folder).mkdir()
        for name, text in files.items():
            (tmp_path / folder / name).write_text(text)
    assert training_stack_paths(tmp_path) == {"studio.a": ["studio.a", "studio.b", "torch"],
                                              "studio.b": ["studio.b", "torch"]}
