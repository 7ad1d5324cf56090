"""Import structure: no import cycles among the napari modules, nothing imports the widget, the core needs no Qt.

Every import counts, module-level, function-level and under `if TYPE_CHECKING:` alike (an AST scan).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "napari_tower"


def import_graph() -> dict[str, set[str]]:
    """Module name -> the package modules it imports anywhere in its source."""
    files = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                found |= {target} | {f"{target}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        graph[name] = {m for m in found if m != name and (m in files or m.split(".")[0] in ("napari", "qtpy"))}
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_no_import_cycles_in_the_napari_layer():
    graph = import_graph()
    plugin = [m for m in graph if m.startswith("napari_tower.napari.")]
    cycles = sorted(m for m in plugin if m in reachable(graph, m))
    assert not cycles, cycles
    assert not [m for m in graph if "napari_tower.napari.widget" in graph[m]]  # sections use host.JobHost


def test_the_core_retrain_needs_no_qt_or_napari():
    graph = import_graph()
    reached = reachable(graph, "napari_tower.segment.retrain")
    assert not [m for m in reached if m.split(".")[0] in ("napari", "qtpy") or m.startswith("napari_tower.napari")]
