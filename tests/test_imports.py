"""The layer rules of docs/design.md, read from the source: no import cycle among recbench's modules,
nothing imports the entry point, and the libraries (embeddings/, data/) import only errors."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "recbench"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every recbench module a file imports, at top level or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("recbench")}
        elif (
            isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("recbench")
        ):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {
        name: {m for m in imports_of(path) if m in files and m != name}
        for name, path in files.items()
    }


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """A cycle as a list of modules, or None (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if state.get(nxt) is None and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if state.get(start) is None and (cycle := visit(start)):
            return cycle
    return None


def test_find_cycle_detects_a_loop() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_between_modules() -> None:
    edges = graph()
    # a package imports its own submodules in __init__; that is not a layer crossing
    edges = {k: {m for m in v if not m.startswith(k + ".")} for k, v in edges.items()}
    assert find_cycle(edges) is None


def test_nothing_imports_the_entry_point() -> None:
    importers = sorted(name for name, deps in graph().items() if "recbench.run" in deps)
    assert importers == []


#: Modules that import nothing from recbench: every layer may use them.
LEAVES = {"recbench.errors", "recbench.record"}


def test_libraries_import_only_errors_and_themselves() -> None:
    for name, deps in graph().items():
        for lib in ("recbench.embeddings", "recbench.data"):
            if name == lib or name.startswith(lib + "."):
                outside = {d for d in deps if not d.startswith(lib) and d not in LEAVES}
                assert not outside, f"{name} imports {sorted(outside)}"


#: The middle layer (``recbench.engine``: samplers, losses, the loop, optimizers, evaluators) sits
#: below the entry point, tracking, tuning, the report, the task wiring and the assembly.
MIDDLE = "recbench.engine"
ABOVE_MIDDLE = (
    "recbench.run", "recbench.tracking", "recbench.tuning", "recbench.report", "recbench.tasks",
    "recbench.assembly", "recbench.serving", "recbench.checks", "recbench.callbacks",
    "recbench.config",
)  # fmt: skip


def _inside(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_the_middle_layer_never_imports_the_layers_above_it() -> None:
    for name, deps in graph().items():
        if _inside(name, MIDDLE):
            above = sorted(d for d in deps if any(_inside(d, a) for a in ABOVE_MIDDLE))
            assert not above, f"{name} imports {above}"


def test_the_record_contract_is_a_leaf() -> None:
    """``recbench.record`` names what runs write and which method keys are not knobs; it imports
    nothing from recbench (nor torch), so every layer, and the report, may read it."""
    assert graph()["recbench.record"] == set()


def test_the_layer_rules_see_the_middle_layer() -> None:
    """The rules above are about real modules: the package and its parts exist in the graph."""
    names = set(graph())
    for part in ("contracts", "loop", "optim", "device", "losses", "samplers.pairs",
                 "samplers.sequences", "evaluators.full", "evaluators.sampled"):  # fmt: skip
        assert f"{MIDDLE}.{part}" in names, part
