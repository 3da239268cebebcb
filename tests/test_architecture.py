"""The package's import graph points only down the pipeline, and has no cycle.

Floors, bottom to top (a module may import its own floor or lower, never higher):
  0  log, trace (plain data), units, settings, plan/budget (the user's text, parsed), sglang_adapter.contract and .models
     (what sglang is: fields, hook targets, the offload manager)
  1  probe/, demo_model
  2  plan/, retune/ (pure: costs, plans, candidates, decisions, the calibration schedule)
  3  cache, report
  4  startup, measure/ (orchestration: startup planning; the monitor and the live tuner)
  5  sglang_adapter.binding (where sglang calls us: hooks, the plan into ServerArgs, the worker's attach)
  6  plugin, cli (entry points)
Every import counts, also one inside a function: a late import hides an edge, it does not remove it.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sglang_autoperf"

FLOORS = [  # most specific first
    ("sglang_autoperf.plan.budget", 0),
    ("sglang_autoperf.plugin", 6), ("sglang_autoperf.cli", 6),
    ("sglang_autoperf.sglang_adapter.binding", 5),
    ("sglang_autoperf.startup", 4), ("sglang_autoperf.measure", 4),
    ("sglang_autoperf.cache", 3), ("sglang_autoperf.report", 3),
    ("sglang_autoperf.plan", 2), ("sglang_autoperf.retune", 2),
    ("sglang_autoperf.probe", 1), ("sglang_autoperf.demo_model", 1), ("sglang_autoperf.kernels", 1),
    ("sglang_autoperf.settings", 0), ("sglang_autoperf.log", 0), ("sglang_autoperf.units", 0), ("sglang_autoperf.trace", 0),
    ("sglang_autoperf.sglang_adapter.contract", 0), ("sglang_autoperf.sglang_adapter.models", 0),
    ("sglang_autoperf.sglang_adapter", 0), ("sglang_autoperf", 0),
]


def _floor(module: str) -> int:
    for prefix, floor in FLOORS:
        if module == prefix or module.startswith(prefix + "."):
            return floor
    raise AssertionError(f"{module} has no floor in tests/test_architecture.py: give it one")


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path, modules: dict[str, Path], package: str = "sglang_autoperf") -> set[tuple[str, int]]:
    """(imported module of ours, line) for every import in the file, at any depth; `package` is the
    file's own package, against which relative imports resolve."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names = [module] + [f"{module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name.startswith("sglang_autoperf"):
                found.add((name, node.lineno))
    return found


def _graph() -> dict[str, set[tuple[str, int]]]:
    modules = _modules()
    def package(name: str, path: Path) -> str:
        return name if path.name == "__init__.py" else name.rpartition(".")[0]

    return {name: {(t, line) for t, line in _imports(path, modules, package(name, path)) if t != name}
            for name, path in modules.items()}


def test_every_import_points_down_or_level():
    upward = [f"{m} (floor {_floor(m)}) imports {t} (floor {_floor(t)}) at line {line}"
              for m, targets in _graph().items() for t, line in sorted(targets) if _floor(t) > _floor(m)]
    assert upward == []


def test_no_import_cycle():
    graph = {m: {t for t, _ in targets if t != "sglang_autoperf"} for m, targets in _graph().items()}
    cycles, index, low, stack, on_stack = [], {}, {}, [], set()

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert cycles == []


def test_the_checker_sees_an_import_inside_a_function(tmp_path):
    """The graph is read, not assumed: a late import of a higher floor is found and would fail."""
    source = tmp_path / "trace.py"
    source.write_text("def f():\n    from sglang_autoperf.measure.monitor import OverlapMonitor\n"
                      "    from .startup import plan_startup\n")
    found = _imports(source, _modules())
    assert found == {("sglang_autoperf.measure.monitor", 2), ("sglang_autoperf.startup", 3)}
    assert _floor("sglang_autoperf.measure.monitor") > _floor("sglang_autoperf.trace")
