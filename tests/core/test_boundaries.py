"""Architectural boundaries, checked rather than claimed.

* The core (everything outside `napari_tower.napari`) imports, and the CLI answers `--help`,
  with Qt, napari and their friends made unimportable.
* No import cycles between the package's modules (function-level imports count: they are
  the usual way of hiding a cycle, not of removing it).
* No source file over `MAX_LINES` lines, apart from an explicit allow-list.

Run as a script (`python tests/test_boundaries.py`) to print the import cycles.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from collections import deque
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = "napari_tower"
PACKAGE_DIR = SRC / PACKAGE

# Modules the core must never need. Blocked by a meta-path finder in a fresh interpreter.
GUI_MODULES = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui", "superqt", "vispy")

# Runs in a subprocess: blocks GUI_MODULES, imports every core module, then runs every CLI
# subcommand's --help. Prints one JSON object with the failures.
_HEADLESS_SCRIPT = textwrap.dedent(
    r'''
    import contextlib, io, importlib, json, pkgutil, re, runpy, sys, traceback

    BLOCKED = set(sys.argv[1].split(","))
    PACKAGE, GUI_SUBPACKAGE = sys.argv[2], sys.argv[2] + ".napari"

    class Blocker:
        """Makes the GUI stack unimportable, as on a machine without it."""
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"{name} is blocked by test_boundaries (headless core)", name=name)
            return None

    preloaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    sys.meta_path.insert(0, Blocker())
    try:  # the blocker itself works (napari is installed here, so only the blocker can stop this)
        import napari
        blocking = False
    except ImportError:
        blocking = True

    def core_modules(package):
        """Every module under `package` except the napari subpackage, found without importing anything."""
        pkg = importlib.import_module(package)
        names = [package]
        for info in pkgutil.iter_modules(pkg.__path__, package + "."):
            if info.name == GUI_SUBPACKAGE or info.name.endswith(".__main__"):
                continue
            names.extend(core_modules(info.name) if info.ispkg else [info.name])
        return names

    failures = {}
    modules = []
    try:
        modules = core_modules(PACKAGE)
    except Exception:
        failures["<discovery>"] = traceback.format_exc()
    for name in modules:
        try:
            importlib.import_module(name)
        except BaseException:
            failures[name] = traceback.format_exc()

    def run_cli(argv):
        """Runs `python -m napari_tower ARGV` in-process (whatever the CLI's layout); returns (status, output)."""
        out = io.StringIO()
        code = 0
        sys.argv = ["napari-tower", *argv]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                runpy.run_module(PACKAGE, run_name="__main__", alter_sys=True)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except BaseException:
                code, _ = 1, out.write(traceback.format_exc())
        return code, out.getvalue()

    def subcommands(top_help):
        """Subcommand names: from the parser `build_parser()` makes, else from the --help usage line."""
        try:
            import argparse
            from napari_tower.cli import build_parser
            parser = build_parser()
            for action in parser._actions:
                if isinstance(action, argparse._SubParsersAction):
                    return sorted(action.choices)
        except ImportError:
            pass
        found = re.search(r"\{([\w,-]+)\}", top_help)
        return sorted(found.group(1).split(",")) if found else []

    helps = {}
    code, text = run_cli(["--help"])
    helps["--help"] = code
    if code != 0:
        failures["napari-tower --help"] = text
    commands = subcommands(text)
    for command in commands:
        code, text = run_cli([command, "--help"])
        helps[command] = code
        if code != 0 or "usage:" not in text:
            failures[f"napari-tower {command} --help"] = text
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    print(json.dumps({"blocking": blocking, "preloaded": preloaded, "modules": modules, "commands": commands,
                      "failures": failures, "leaked": leaked}))
    '''
)


def _run_headless() -> dict:
    """Runs `_HEADLESS_SCRIPT` in a fresh interpreter on this checkout's sources."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    env.pop("DISPLAY", None)  # nothing in the core may need a display either
    result = subprocess.run([sys.executable, "-c", _HEADLESS_SCRIPT, ",".join(GUI_MODULES), PACKAGE],
                            capture_output=True, text=True, timeout=600, env=env, cwd=SRC.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_core_imports_and_cli_help_without_gui_stack():
    report = _run_headless()
    assert report["blocking"], "the meta-path blocker let napari through"
    assert not report["preloaded"], f"GUI modules imported at interpreter start-up: {report['preloaded']}"
    assert f"{PACKAGE}.cli" in report["modules"]  # a module or a package: discovery reached it
    assert not any(m.startswith(f"{PACKAGE}.napari") for m in report["modules"])
    assert len(report["commands"]) >= 5, report["commands"]  # discovery worked
    assert not report["failures"], "\n\n".join(f"== {name}\n{text}" for name, text in report["failures"].items())
    assert not report["leaked"], report["leaked"]


# ---------------------------------------------------------------------------------------------
# Import cycles
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportEdge:
    """One intra-package import: `source` imports `target` at `path:line` with statement `code`."""

    source: str
    target: str
    path: str
    line: int
    code: str


def module_files(package_dir: Path = PACKAGE_DIR) -> dict[str, Path]:
    """Dotted module name -> file, for every `.py` file under `package_dir`.

    A package is its `__init__.py`: importing `napari_tower.segment` runs that file.
    """
    modules: dict[str, Path] = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _shown(path: Path) -> str:
    """`path` relative to the checkout when inside it (shorter messages), else as it is."""
    return path.relative_to(SRC.parent).as_posix() if path.is_relative_to(SRC.parent) else str(path)


def _resolve(known: set[str], base: str) -> str | None:
    """The longest prefix of `base` that is one of our modules (None if outside the package)."""
    parts = base.split(".")
    while parts:
        name = ".".join(parts)
        if name in known:
            return name
        parts.pop()
    return None


def import_edges(modules: dict[str, Path]) -> list[ImportEdge]:
    """Every intra-package import, at any depth (module level, in functions, under TYPE_CHECKING).

    `from pkg import name` points at `pkg.name` when that is a module, otherwise at `pkg` (its
    `__init__`). Importing `a.b.c` also runs `a/__init__` and `a/b/__init__`; those implicit
    parent edges are left out, or every package that re-exports its submodules would be a
    "cycle" with each of them (Python initialises the parent first, so those are harmless).
    """
    known = set(modules)
    edges: list[ImportEdge] = []
    for source, path in modules.items():
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        package = source if path.name == "__init__.py" else source.rpartition(".")[0]
        for node in ast.walk(ast.parse(text, filename=str(path))):
            targets: list[str | None] = []
            if isinstance(node, ast.Import):
                targets = [_resolve(known, alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    targets.append(submodule if submodule in known else _resolve(known, base))
            for target in dict.fromkeys(targets):
                if target is not None and target != source:
                    edges.append(ImportEdge(source, target, _shown(path), node.lineno,
                                            lines[node.lineno - 1].strip()))
    return edges


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative): the strongly connected components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        components.append(sorted(component))
    return sorted(components)


def shortest_cycle(graph: dict[str, set[str]], start: str, within: set[str]) -> list[str]:
    """The shortest cycle through `start` inside one component (breadth-first), as a closed path."""
    previous: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(graph.get(node, ())):
            if child not in within:
                continue
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [*reversed(path), start]
            if child not in previous:
                previous[child] = node
                queue.append(child)
    return []


def find_cycles(package_dir: Path = PACKAGE_DIR) -> tuple[list[list[str]], list[ImportEdge]]:
    """The import cycles (as components) and the edges that make them."""
    edges = import_edges(module_files(package_dir))
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.source, set()).add(e.target)
        graph.setdefault(e.target, set())
    components = strongly_connected(graph)
    return components, edges


def describe_cycles(components: list[list[str]], edges: list[ImportEdge]) -> str:
    """A readable report: per component, its shortest cycles, then the import lines inside it."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.source, set()).add(e.target)
    short = PACKAGE + "."
    out: list[str] = []
    for n, component in enumerate(components, 1):
        members = set(component)
        out.append(f"cycle group {n}: {', '.join(m.removeprefix(short) for m in component)}")
        seen: set[tuple[str, ...]] = set()
        for member in component:
            cycle = shortest_cycle(graph, member, members)
            key = min(tuple(cycle[i:-1] + cycle[:i]) for i in range(len(cycle) - 1))
            if key not in seen:
                seen.add(key)
                out.append("  " + " -> ".join(m.removeprefix(short) for m in (*key, key[0])))
        out.append("  made by:")
        for e in sorted(edges, key=lambda e: (e.path, e.line)):
            if e.source in members and e.target in members:
                arrow = f"{e.source.removeprefix(short)} -> {e.target.removeprefix(short)}"
                out.append(f"    {e.path}:{e.line}: {e.code}   [{arrow}]")
    return "\n".join(out)


def test_no_import_cycles():
    components, edges = find_cycles()
    assert not components, "import cycles between napari_tower modules:\n" + describe_cycles(components, edges)


def test_cycle_finder_on_a_toy_package(tmp_path):
    """The finder itself: relative imports at any depth, `from . import module`, `__init__` re-exports."""
    pkg = tmp_path / "toy"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "def f():\n    from .sub import thing\n",
        "sub/__init__.py": "from .b import thing\n",
        "sub/b.py": "from .. import c\nthing = 1\n",
        "c.py": "import toy.a\n",
        "d.py": "from toy import a\nfrom .sub.b import thing\n",  # no cycle: nothing imports d
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    modules = module_files(pkg)
    assert set(modules) == {"toy", "toy.a", "toy.sub", "toy.sub.b", "toy.c", "toy.d"}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for e in import_edges(modules):
        graph[e.source].add(e.target)
    assert graph["toy.a"] == {"toy.sub"} and graph["toy.sub"] == {"toy.sub.b"}
    assert graph["toy.sub.b"] == {"toy.c"} and graph["toy.d"] == {"toy.a", "toy.sub.b"}
    assert strongly_connected(graph) == [["toy.a", "toy.c", "toy.sub", "toy.sub.b"]]


# ---------------------------------------------------------------------------------------------
# Module size
# ---------------------------------------------------------------------------------------------

MAX_LINES = 500

# Files allowed over MAX_LINES, each with the most lines it may have (so it cannot grow while it
# waits). An entry whose file is gone or back under MAX_LINES fails the test: delete the entry.
OVERSIZED_ALLOWED: dict[str, int] = {
    # One corruption per function plus the fused TOWER pass that shares their tables; splitting it would put
    # the fused pass and the functions it must stay bit-identical with in different files.
}


def test_module_size():
    sizes = {p.relative_to(PACKAGE_DIR).as_posix(): len(p.read_text(encoding="utf-8").splitlines())
             for p in PACKAGE_DIR.rglob("*.py")}
    problems = []
    for name, lines in sorted(sizes.items()):
        ceiling = OVERSIZED_ALLOWED.get(name, MAX_LINES)
        if lines > ceiling:
            why = " (its allow-list ceiling)" if name in OVERSIZED_ALLOWED else ""
            problems.append(f"{name}: {lines} lines, over {ceiling}{why}")
    for name in sorted(OVERSIZED_ALLOWED):
        if sizes.get(name, 0) <= MAX_LINES:
            now = f"{sizes[name]} lines" if name in sizes else "gone"
            problems.append(f"{name}: in OVERSIZED_ALLOWED but {now}: remove the entry")
    assert not problems, "\n".join(problems)


if __name__ == "__main__":
    found, import_lines = find_cycles()
    print(describe_cycles(found, import_lines) if found else "no import cycles")
    sys.exit(1 if found else 0)
