"""The layering rule of docs/layout.md, enforced.

Imports are checked the way tornado's import_test.py does it: in fresh interpreters, so
that nothing another test imported hides a dependency.  The import graph (function-level
imports included) is read from the source and must have no cycle between modules or
between packages, and every edge between packages must be one the rule allows.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("pollbench", "analysis", "loadtests", "target_app")

# package -> the packages it may import (docs/layout.md).  "pollbench" is the top of the
# package (errors.py, paths.py, __init__.py), which imports none of its subpackages.
ALLOWED = {
    "target_app": set(),
    "analysis": set(),
    "loadtests": {"analysis"},
    "pollbench": {"analysis"},
    "pollbench.records": {"pollbench", "analysis"},
    "pollbench.stack": {"pollbench", "pollbench.records", "analysis", "loadtests", "target_app"},
    "pollbench.actions": {"pollbench", "pollbench.records", "pollbench.stack", "analysis"},
    "pollbench.cli": {"pollbench", "pollbench.actions", "pollbench.records", "pollbench.stack",
                      "analysis", "target_app"},
    "pollbench.__main__": {"pollbench.cli"},  # python -m pollbench
}


def loaded_after(code: str) -> set[str]:
    """The modules a fresh interpreter has loaded after running ``code``."""
    probe = code + "\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))\n"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    import json

    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


def of(modules: set[str], *roots: str) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in roots)


def test_importing_analysis_loads_nothing_of_pollbench_locust_or_the_target():
    mods = loaded_after("import analysis.report, analysis.compare_report, analysis.ranking, "
                        "analysis.verdict_format, analysis.synthetic, analysis.catalog")
    assert of(mods, "pollbench", "locust", "loadtests", "target_app", "gevent") == []


def test_importing_the_locustfile_loads_no_pandas_and_nothing_of_pollbench():
    mods = loaded_after("import loadtests.locustfile, loadtests.shapes")
    assert "locust" in mods  # the probe did import it
    assert of(mods, "pollbench", "pandas", "matplotlib", "scipy", "target_app") == []


def test_importing_the_target_loads_none_of_the_others():
    mods = loaded_after("import target_app, target_app.server, target_app.state")
    assert of(mods, "pollbench", "analysis", "loadtests", "locust") == []


def test_pollbench_help_loads_no_scipy_pandas_or_matplotlib():
    mods = loaded_after("from pollbench.cli import main\n"
                        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass")
    assert "pollbench.cli.run" in mods  # every command's parser was built
    assert of(mods, "scipy", "pandas", "matplotlib", "locust", "gevent") == []


# -- the import graph, read from the source -------------------------------------------------

def source_modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            rel = path.relative_to(REPO).with_suffix("")
            if "tests" in rel.parts:
                continue
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            mods[".".join(parts)] = path
    return mods


def import_graph() -> dict[str, set[str]]:
    mods = source_modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in mods
                           else node.module for a in node.names]
            for target in targets:
                while target and target not in mods:  # import a.b.c of a package: a.b.c's module
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def package_of(module: str) -> str:
    """The (sub)package a module belongs to: pollbench.cli.run -> pollbench.cli."""
    if module in ALLOWED:
        return module
    parent = module.rpartition(".")[0]
    return package_of(parent) if parent else module


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_reader_sees_function_level_imports():
    graph = import_graph()
    # pollbench.cli.run imports the action inside its handler, not at the top
    assert "pollbench.actions.run" in graph["pollbench.cli.run"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_between_modules():
    graph = import_graph()
    # a package's __init__ importing its own modules is not a cycle of the design
    assert cycles(graph) == []


def test_packages_import_only_what_the_layering_rule_allows():
    graph = import_graph()
    edges: set[tuple[str, str]] = set()
    bad = []
    for module, targets in graph.items():
        src = package_of(module)
        for target in targets:
            dst = package_of(target)
            if src == dst:
                continue
            edges.add((src, dst))
            if dst not in ALLOWED.get(src, set()):
                bad.append(f"{module} -> {target}")
    assert bad == []
    package_graph: dict[str, set[str]] = {}
    for src, dst in edges:
        package_graph.setdefault(src, set()).add(dst)
    assert cycles(package_graph) == []


@pytest.mark.parametrize("module, package", [
    ("pollbench.cli", "pollbench.cli"), ("pollbench.actions.run", "pollbench.actions"),
    ("pollbench.stack.stack", "pollbench.stack"), ("pollbench.records.runinfo",
                                                   "pollbench.records"),
    ("pollbench.log", "pollbench"), ("target_app.shared", "target_app")])
def test_each_module_is_judged_as_a_member_of_its_own_layer(module, package):
    assert package_of(module) == package


def test_every_subpackage_of_pollbench_is_a_layer_of_the_rule():
    """A new subpackage must be given its place: otherwise its modules would be judged as
    the top of the package and the rule would say nothing true about it."""
    subpackages = {f"pollbench.{p.parent.name}" for p in (REPO / "pollbench").glob("*/__init__.py")
                   if p.parent.name not in ("tests", "data")}
    assert subpackages and subpackages <= set(ALLOWED), subpackages - set(ALLOWED)
