"""The package's layering, read from the source: imports point one way and form no cycle.

Every ``import`` counts, including those inside functions (a lazy import hides a cycle, it does not remove it);
only imports under ``if TYPE_CHECKING:`` are left out, since they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "text_recognition"
PACKAGE = PACKAGE_DIR.name


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The package's modules that ``module`` imports at run time."""
    found: set[str] = set()
    base = module.split(".") if is_package else module.split(".")[:-1]

    def resolve(name: str) -> str | None:
        while name and name not in known:  # `from .a.b import func` -> module a.b
            name = name.rpartition(".")[0]
        return name or None

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE and (target := resolve(alias.name)):
                    found.add(target)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = base[: len(base) - node.level + 1]
                source = ".".join(parent + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] == PACKAGE:
                for alias in node.names:  # `from . import stages` imports the submodule stages
                    target = resolve(f"{source}.{alias.name}") if f"{source}.{alias.name}" in known else None
                    target = target or resolve(source)
                    if target:
                        found.add(target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    # Importing a.b.c first runs the package a.b's __init__ (unless the importer lives inside a.b already).
    for target in list(found):
        parent = target.rpartition(".")[0]
        while parent.count("."):
            if not (module == parent or module.startswith(parent + ".")):
                found.add(parent)
            parent = parent.rpartition(".")[0]
    found.discard(module)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE_DIR.rglob("*.py"))
    known = {_module_name(path) for path in paths}
    return {
        _module_name(path): _imported(ast.parse(path.read_text(encoding="utf-8")), _module_name(path),
                                      path.name == "__init__.py", known)  # fmt: skip
        for path in paths
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None. Edges into the root package (``text_recognition``) are
    ignored: Python imports a package before any of its modules, so they never run as a cycle."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if target == PACKAGE:
                continue
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_graph_has_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


TRAINING = f"{PACKAGE}.training"
#: The rooms of ``training/`` that the run's steps use; they never import a step room, nor the loop.
TRAINING_INFRASTRUCTURE = ("state", "optim", "run_dir", "resume", "hub_push", "distributed", "streams")
TRAINING_STEPS = ("start", "validation", "finish")


def _in_training(module: str) -> bool:
    return module == TRAINING or module.startswith(TRAINING + ".")


def test_only_the_training_script_imports_training():
    importers = sorted(module for module, targets in import_graph().items()
                       if not _in_training(module) and any(_in_training(target) for target in targets))  # fmt: skip
    assert importers == [], f"modules of the package that import training: {importers}"


def test_the_loop_imports_the_rooms_not_the_reverse():
    graph = import_graph()
    rooms = {module: targets for module, targets in graph.items() if module.startswith(TRAINING + ".")}
    assert {f"{TRAINING}.{name}" for name in ("loop", *TRAINING_STEPS, *TRAINING_INFRASTRUCTURE)} <= set(rooms)
    back_to_loop = sorted(module for module, targets in rooms.items() if f"{TRAINING}.loop" in targets)
    assert back_to_loop == [], f"rooms of training/ that import the loop: {back_to_loop}"
    steps = {f"{TRAINING}.{name}" for name in TRAINING_STEPS}
    up = sorted(f"{module} -> {target}" for module, targets in rooms.items() for target in targets & steps
                if module.rpartition(".")[2] in TRAINING_INFRASTRUCTURE)  # fmt: skip
    assert up == [], f"infrastructure rooms of training/ that import a step room: {up}"
    shared = {target for target in rooms[f"{TRAINING}.state"] if _in_training(target)}
    assert shared == set(), f"training/state.py must import no other room: {shared}"


def test_no_module_of_the_package_is_over_500_lines():
    long = {str(path.relative_to(PACKAGE_DIR)): n for path in sorted(PACKAGE_DIR.rglob("*.py"))
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > 500}  # fmt: skip
    assert long == {}, f"split these modules by job (the house rule is about 500 lines at most): {long}"


def test_the_cycle_finder_finds_a_lazy_cycle(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_type_checking_imports_and_lazy_imports_are_read():
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from .config import ModelConfig\n"
        "def f():\n    from .data import mixing\n    from . import stages\n"
    )
    known = {"text_recognition", "text_recognition.config", "text_recognition.data", "text_recognition.data.mixing",
             "text_recognition.stages", "text_recognition.registry"}  # fmt: skip
    found = _imported(ast.parse(source), "text_recognition.registry", False, known)
    assert found == {"text_recognition.data.mixing", "text_recognition.data", "text_recognition.stages"}
