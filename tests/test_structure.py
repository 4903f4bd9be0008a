"""The package's layering, checked on its real import graph (grimp, as import-linter reads it).

    front ends (frontends/: magics, cli, commands, display, doctor) | server/
        -> backends/ (docker/, kubernetes/, export)
        -> core/ (spec, events, the backend contract, runs, store, snapshots, verbs, values)
        -> runner/ (the in-container program and its wire protocol)
        -> config, errors

An import may only point down this list, never up, and siblings on one line stay apart; no two
modules may import each other, even through others. The same layers are an import-linter
contract in pyproject.toml, which the test command runs as `lint-imports`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp
import pytest

PACKAGE = "mlcontainer_magics"
ROOT = Path(__file__).resolve().parents[1]
# Top to bottom; a tuple is a layer of independent siblings.
LAYERS = [
    # store: the public import path of the Store; client: of service(), a served cell's client
    ("frontends", "server", "store", "client"),
    ("backends",),
    ("core",),
    ("runner",),
    ("config",),
    ("errors", "_version"),
]
# Nothing below the front ends may import these (the core knows no IPython or HTTP).
FRONT_END_LIBRARIES = ("IPython", "ipywidgets", "tornado", "jupyter_server")


def _graph():
    return grimp.build_graph(PACKAGE, include_external_packages=True, cache_dir=None)


def _component(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _layer(module: str) -> int | None:
    comp = _component(module)
    for i, layer in enumerate(LAYERS):
        if comp in layer:
            return i
    return None


def layering_problems(graph) -> list[str]:
    """Imports that point up the layers, or across siblings of one layer."""
    problems = []
    for importer in sorted(m for m in graph.modules if m.startswith(PACKAGE + ".")):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            if not imported.startswith(PACKAGE + "."):
                continue
            a, b = _layer(importer), _layer(imported)
            if a is None or b is None:
                continue
            if b < a:
                problems.append(f"{importer} imports {imported}, a layer above it")
            elif a == b and _component(importer) != _component(imported):
                problems.append(f"{importer} imports its sibling {imported}")
    return problems


def library_problems(graph) -> list[str]:
    problems = []
    for module in sorted(m for m in graph.modules if m.startswith(PACKAGE + ".")):
        layer = _layer(module)
        # The runner runs inside the container, where it routes an image's IPython through itself.
        if layer is None or layer == 0 or _component(module) == "runner":
            continue
        for imported in graph.find_modules_directly_imported_by(module):
            if imported.split(".")[0] in FRONT_END_LIBRARIES:
                problems.append(f"{module} imports {imported}, a front end's library")
    return problems


def cycles(graph) -> list[str]:
    """Pairs of our modules that reach each other through imports."""
    ours = sorted(m for m in graph.modules if m.startswith(PACKAGE + "."))
    found = []
    for importer in ours:
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            if imported in ours and imported != importer:
                back = graph.find_shortest_chain(importer=imported, imported=importer)
                if back:
                    found.append(" -> ".join((importer,) + tuple(back)))
    return found


@pytest.fixture(scope="module")
def graph():
    return _graph()


def test_every_module_is_in_a_layer(graph):
    stray = [m for m in graph.modules if m.startswith(PACKAGE + ".") and _layer(m) is None]
    assert stray == []


def test_imports_point_down_the_layers(graph):
    assert layering_problems(graph) == []


def test_only_front_ends_import_ipython_and_the_server(graph):
    assert library_problems(graph) == []


def test_no_import_cycles(graph):
    assert cycles(graph) == []


def test_the_checks_catch_what_they_forbid(graph):
    """Each check fails on a graph with the fault added: they can fail."""
    graph.add_import(importer=f"{PACKAGE}.core.runs", imported=f"{PACKAGE}.frontends.magics")
    assert any("a layer above" in p for p in layering_problems(graph))
    graph.add_import(importer=f"{PACKAGE}.server.handlers", imported=f"{PACKAGE}.frontends.cli")
    assert any("sibling" in p for p in layering_problems(graph))
    graph.add_import(importer=f"{PACKAGE}.core.store", imported="IPython")
    assert library_problems(graph)
    graph.add_import(importer=f"{PACKAGE}.core.spec", imported=f"{PACKAGE}.core.runs")
    assert any("core.spec" in c for c in cycles(graph))


def test_import_linter_contracts_hold():
    """The same rules as pyproject.toml's import-linter contracts, run as CI runs them."""
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.skip("import-linter is not installed")
    out = subprocess.run(
        [str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout
