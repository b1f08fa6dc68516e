"""Imports point down: no import cycles (imports inside functions included) and no module imports a higher layer
than its own (the layering in ``docs/architecture.md``, "Layers").

The package is read with :mod:`ast`, nothing is imported: ``import x`` / ``from x import y`` anywhere in a module
(top level, inside functions, under ``TYPE_CHECKING``) is an edge. Strings such as the engine table's
``"module:attribute"`` are not imports: that late binding is the registry's job, and the registry sits at the bottom.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "visionpeft"

#: Layers, lowest first: a module may import its own layer and the ones below. Keep in step with
#: docs/architecture.md ("Layers"). A module is placed by its longest matching prefix.
LAYERS: tuple[tuple[str, ...], ...] = (
    # leaves: errors, files, the two registries (strings only), records, the model description, devices, memory
    ("errors", "safe_yaml", "matching", "outputs", "packaged", "ultralytics_tasks", "engines", "spec", "devices",
     "checkpoint", "profiling", "wrappers", "results", "examples", "image_records", "run_dir", "strict_numbers"),
    # the strategy layer: methods, the plan, the frozen region, the adapted state (no timm / Ultralytics)
    ("strategies", "plan", "snapshot", "foreign", "state", "adapter_fields", "optim_settings"),
    # the only code that knows timm and Ultralytics models (the spec of a model comes from here)
    ("backends",),
    # the public entry points over a model: apply / merge, adapter files, named adapters, PEFT's format
    ("api", "adapter_io", "adapters", "params", "peft_format"),
    ("recipe", "data", "logging", "report"),
    ("tasks",),
    ("cli", "__init__", "__main__"),
)


#: Imports known to point up, each with the change that removes it (none left: the last one went with
#: ``backends/ultralytics_transfer.py``, replaced by Ultralytics' own ``pretrained=`` transfer).
PENDING_UP: frozenset[tuple[str, str]] = frozenset()


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


def _targets(module: str, is_pkg: bool, node: ast.AST, known: dict) -> list[str]:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = module.split(".")[: len(module.split(".")) - (0 if is_pkg else 1)]
            base = base[: len(base) - (node.level - 1)]
            name = ".".join(base + ([node.module] if node.module else []))
        else:
            name = node.module or ""
        names = [f"{name}.{a.name}" if f"{name}.{a.name}" in known else name for a in node.names]
    else:
        return []
    out = []
    for name in names:
        while name not in known and "." in name:
            name = name.rsplit(".", 1)[0]
        if name.startswith("visionpeft") and name in known and name != module:
            out.append(name)
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the visionpeft modules it imports (anywhere in the file)."""
    known = _modules()
    graph: dict[str, set[str]] = {}
    for module, (path, is_pkg) in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        graph[module] = {t for node in ast.walk(tree) for t in _targets(module, is_pkg, node, known)}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layer(module: str) -> int:
    rel = module.removeprefix("visionpeft").lstrip(".") or "__init__"
    best = max(((len(p), i) for i, names in enumerate(LAYERS) for p in names
                if rel == p or rel.startswith(p + ".")), default=None)
    assert best is not None, f"{module}: in no layer of LAYERS (tests/test_layers.py, docs/architecture.md)"
    return best[1]


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_no_module_imports_a_higher_layer():
    graph = import_graph()
    up = sorted(f"{m} (layer {layer(m)}) -> {t} (layer {layer(t)})" for m, targets in graph.items()
                for t in targets if layer(t) > layer(m) and (m, t) not in PENDING_UP)
    assert up == []


def test_the_checks_see_function_level_imports(tmp_path):
    """A cycle made only of imports inside functions is still a cycle."""
    graph = {"a": {"b"}, "b": {"a"}, "c": {"a"}}
    assert cycles(graph) == [["a", "b"]]
