"""The house's rule (shared/design/layout.md, README "Layout"): every import points down, and no module
imports itself back through others. Walks the AST of every module, lazy imports inside functions and
TYPE_CHECKING blocks included (a lazy import is still a dependency)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# room -> rooms it may import (besides itself); the order of the house: tools > cli > run > plan > config >
# errors, records beside them (it reads run directories, text only), recipes on the compute node
ALLOWED = {
    "errors": set(),
    "records": {"errors"},
    "config": {"errors"},
    "plan": {"config", "errors", "records"},
    "run": {"plan", "config", "errors", "records"},
    "cli": {"run", "plan", "config", "errors"},
    "tools": {"cli", "run", "plan", "config", "errors", "records"},
    "recipes": {"records"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "recipes":
        return "recipes"
    if parts[0] != "launcher" or len(parts) == 1:
        return None
    return {"__main__": "cli"}.get(parts[1], parts[1])


MODULES = {module_name(p): p for d in ("launcher", "recipes") for p in (ROOT / d).rglob("*.py")}


def imports_of(module: str) -> set[str]:
    """Project modules `module` imports: `from a.b import c` names a.b.c where that is a module, else a.b."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        out |= {n for n in names if n in MODULES and n != module}
    return out


GRAPH = {m: imports_of(m) for m in MODULES}


def test_the_walk_sees_imports():
    """The check itself works: cli imports the run room, the rules import the schema."""
    assert "launcher.run.registry" in GRAPH["launcher.cli"]
    assert "launcher.config.schema" in GRAPH["launcher.plan.rules.parallel"]


@pytest.mark.parametrize("module", sorted(m for m in MODULES if room(m)))
def test_imports_point_down(module):
    mine = room(module)
    wrong = sorted(t for t in GRAPH[module] if room(t) and room(t) != mine and room(t) not in ALLOWED[mine])
    assert not wrong, f"{module} ({mine}) may import only {sorted(ALLOWED[mine])}, not {wrong}"


def _cycle() -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(GRAPH[m]):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state and (found := visit(t)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(GRAPH):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_cycles():
    cycle = _cycle()
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_finds_a_planted_cycle(monkeypatch):
    monkeypatch.setitem(GRAPH, "launcher.errors", GRAPH["launcher.errors"] | {"launcher.cli"})
    monkeypatch.setitem(GRAPH, "launcher.cli", GRAPH["launcher.cli"] | {"launcher.errors"})
    assert _cycle() is not None
