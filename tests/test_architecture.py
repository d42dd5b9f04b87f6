"""The house rules docs/architecture.md states, read from the source with ``ast``: no import
cycles, no module imports a higher layer, and the orchestration reads in short functions.

Every import counts: module level, inside functions (lazy imports) and under ``TYPE_CHECKING``,
because a lazy import is still a dependency a reader has to climb.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "auto_round_mllm"

# Lowest first. A module may import its own group and any group of a lower rank; groups that share
# a rank are peers and may not import each other (tuners choose values, exporters store them).
LAYERS: list[tuple[int, str, tuple[str, ...]]] = [
    (0, "foundation", ("_version", "errors", "registry", "utils")),
    (1, "configuration", ("config", "flags", "autoround_flags", "layer_config")),
    (2, "quant", ("quant",)),
    (3, "models", ("models",)),
    (4, "data", ("data",)),
    (5, "tuning", ("tuning",)),
    (5, "export", ("export",)),
    (6, "pipeline", ("pipeline",)),
    (7, "inference", ("inference",)),
    (8, "evaluate", ("evaluate",)),
    (9, "api", ("api", "preflight", "report", "__init__")),
    (10, "cli", ("cli", "__main__")),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports; ``from pkg import sub`` counts as importing ``pkg.sub``."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {target for target in found if target in modules and target != name}


def group_of(name: str) -> tuple[int, str]:
    parts = name.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    for rank, group, members in LAYERS:
        if top in members:
            return rank, group
    raise AssertionError(f"{name} belongs to no layer: add its top-level name to LAYERS in {__file__}")


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def test_every_module_has_a_layer(graph):
    for name in graph:
        group_of(name)


def test_no_module_imports_a_higher_layer_or_a_peer(graph):
    wrong = []
    for source, targets in sorted(graph.items()):
        source_rank, source_group = group_of(source)
        for target in sorted(targets):
            target_rank, target_group = group_of(target)
            if target_group != source_group and target_rank >= source_rank:
                wrong.append(f"{source} ({source_group}) imports {target} ({target_group})")
    assert wrong == []


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm; returns the components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles(graph):
    assert strongly_connected(graph) == []


def test_the_checker_sees_cycles_and_upward_imports():
    """The rule above would pass vacuously if the graph came out empty."""
    assert strongly_connected({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    modules = all_modules()
    streaming = imports_of(
        "auto_round_mllm.models.streaming", modules["auto_round_mllm.models.streaming"], modules
    )
    assert "auto_round_mllm.utils.tensor_files" in streaming
    assert group_of("auto_round_mllm.export.writer") == (5, "export")


ORCHESTRATION = ("pipeline", "api", "preflight", "report", "cli")
"""Where a reader follows a run step by step: no function there may be longer than a screen."""
MAX_FUNCTION_LINES = 80


def test_orchestration_functions_fit_on_a_screen():
    long = []
    for name, path in all_modules().items():
        parts = name.split(".")
        if len(parts) < 2 or parts[1] not in ORCHESTRATION:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert long == []
