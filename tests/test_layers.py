"""The module graph of ``fdalign_plugins`` and ``adapters/`` runs one way.

Imports are read from the source with :mod:`ast` (module level, inside functions, under
``TYPE_CHECKING``: every ``import`` statement counts, since a lazy import is still a
dependency). Two properties are checked (DESIGN.md, "Layers"):

* no cycles: no module reaches itself through its imports;
* no upward imports: a module imports only from its own layer or below, for the layer
  order in DESIGN.md as it maps onto today's modules (:data:`LAYERS`). There is no
  exception list: a piece two layers need lives in the lower one.

Some rules admit no exception at all (:func:`test_strict_rules`): the low layers never
import the training, feature, bench or CLI layers; nothing but the CLI imports the CLI;
the core never imports the built-in adapters or method plugins.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Mapping, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Source folder -> import name (``adapters/`` installs as ``fdalign_adapters``).
PACKAGES = {"fdalign_plugins": "fdalign_plugins", "adapters": "fdalign_adapters"}

#: The built-in method plugins other than FD-Align (whose text prototypes the trainer
#: uses): like the built-in adapters they come only through entry points and may use the
#: whole public API (LP-FT's probe trains with the adapters' ``train_on_views``).
METHOD_PLUGINS = tuple(f"fdalign_plugins.methods.{m}" for m in ("full_ft", "lipsum_ft", "lp_ft", "wise_ft"))

#: DESIGN.md's layers, lowest first, mapped onto today's modules. A module belongs to the
#: layer naming it or its closest package (``fdalign_plugins.datasets`` covers
#: ``fdalign_plugins.datasets.coop``); the top package ``fdalign_plugins`` names only its
#: ``__init__``, so a new module must be placed here explicitly.
LAYERS: List[Tuple[str, Tuple[str, ...]]] = [
    ("leaf helpers", ("fdalign_plugins", "fdalign_plugins.errors", "fdalign_plugins.ops", "fdalign_plugins.distributed",
                      "fdalign_plugins.progress", "fdalign_plugins.threads", "fdalign_plugins.stats",
                      "fdalign_plugins.checkpoint", "fdalign_plugins.results", "fdalign_plugins.predictions",
                      "fdalign_plugins.specs", "fdalign_plugins.hookspecs", "fdalign_plugins.registry")),
    ("config", ("fdalign_plugins.config",)),
    ("data and CLIP", ("fdalign_plugins.datasets", "fdalign_plugins.world", "fdalign_plugins.model_registry",
                       "fdalign_plugins.models", "fdalign_plugins.templates")),
    ("prompts, SPC, methods", ("fdalign_plugins.prompts", "fdalign_plugins.spc", "fdalign_plugins.losses",
                               "fdalign_plugins.method_api", "fdalign_plugins.methods")),
    ("training", ("fdalign_plugins.spine", "fdalign_plugins.trainer")),
    ("features", ("fdalign_plugins.features", "fdalign_plugins.store")),
    ("plugin contract and host", ("fdalign_plugins.adapter_api", "fdalign_plugins.search",
                                  "fdalign_plugins.plugins", "fdalign_plugins.preflight")),
    ("plugins", ("fdalign_adapters",) + METHOD_PLUGINS),
    ("bench", ("fdalign_plugins.bench", "fdalign_plugins.runner", "fdalign_plugins.protocols",
               "fdalign_plugins.reproduce", "fdalign_plugins.report")),
    ("cli", ("fdalign_plugins.cli",)),
]

#: Rules with no exception: (importer prefixes, forbidden target prefixes, why).
LOW = ("fdalign_plugins.errors", "fdalign_plugins.ops", "fdalign_plugins.config", "fdalign_plugins.datasets",
       "fdalign_plugins.models", "fdalign_plugins.model_registry")
HIGH = ("fdalign_plugins.trainer", "fdalign_plugins.features", "fdalign_plugins.runner", "fdalign_plugins.report",
        "fdalign_plugins.cli")


def discover(roots: Mapping[str, str], base: Path) -> Dict[str, Path]:
    """``{module name: file}`` for every ``.py`` under ``base / folder`` (``folder`` -> import name)."""
    mods: Dict[str, Path] = {}
    for folder, name in roots.items():
        for p in sorted((base / folder).rglob("*.py")):
            parts = [name] + list(p.relative_to(base / folder).with_suffix("").parts)
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return mods


def import_graph(mods: Mapping[str, Path]) -> Dict[str, Dict[str, int]]:
    """``{module: {imported module: first line}}``, the way the before-stop hook reads it.

    Every ``import`` / ``from ... import`` anywhere in the file counts. ``from a import b``
    is an edge to ``a`` and, when ``a.b`` is a module, to ``a.b``; a name resolves to the
    longest module prefix. Imports of a module's own parent packages are not edges
    (Python imports them anyway).
    """
    edges: Dict[str, Dict[str, int]] = {m: {} for m in mods}
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rsplit(".", 1)[0]
        for n in ast.walk(ast.parse(p.read_text(), filename=str(p))):
            if isinstance(n, ast.Import):
                names = [a.name for a in n.names]
            elif isinstance(n, ast.ImportFrom):
                base = n.module or ""
                if n.level:
                    head = pkg.split(".")[: len(pkg.split(".")) - n.level + 1]
                    base = ".".join(head + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in n.names]
            else:
                continue
            for t in names:
                while t and t not in mods:
                    t = t.rsplit(".", 1)[0] if "." in t else ""
                if t and t != m and not m.startswith(t + "."):
                    edges[m].setdefault(t, n.lineno)
    return edges


def find_cycles(edges: Mapping[str, Mapping[str, int]]) -> List[List[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected component of more than one module."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    comps: List[List[str]] = []

    def visit(v: str) -> None:  # Tarjan; the graph is small, recursion depth is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
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
                comps.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    cycles = []
    for comp in comps:  # walk inside the component from its first module back to it (BFS: a shortest cycle)
        start, inside = comp[0], set(comp)
        prev: Dict[str, str] = {}
        frontier = [start]
        while start not in prev:
            nxt = []
            for v in frontier:
                for w in sorted(edges[v]):
                    if w in inside and w not in prev:
                        prev[w] = v
                        nxt.append(w)
            frontier = nxt
        path = [start]
        while True:
            path.append(prev[path[-1]])
            if path[-1] == start:
                break
        cycles.append(path[::-1])
    return cycles


def describe(cycle: List[str], edges: Mapping[str, Mapping[str, int]]) -> str:
    return " -> ".join(f"{a} (line {edges[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"


def layer_of(module: str) -> int:
    best, depth = -1, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for pre in prefixes:
            covers = module == pre or (pre != "fdalign_plugins" and module.startswith(pre + "."))
            if covers and len(pre) > depth:
                best, depth = i, len(pre)
    return best


def _under(module: str, prefixes: Tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


@pytest.fixture(scope="module")
def graph() -> Dict[str, Dict[str, int]]:
    return import_graph(discover(PACKAGES, ROOT))


def test_walker_sees_lazy_and_type_checking_imports(tmp_path):
    """The walker itself: a cycle closed by a function-level import is found and named."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import thing\n")
    (pkg / "b.py").write_text("def thing():\n    from . import c\n    return c\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.a\n")
    (pkg / "d.py").write_text("import pkg.a\n")
    edges = import_graph(discover({"pkg": "pkg"}, tmp_path))
    assert edges["pkg.b"] == {"pkg.c": 2}
    assert edges["pkg.c"] == {"pkg.a": 3}
    cycles = find_cycles(edges)
    assert cycles == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]
    assert describe(cycles[0], edges) == "pkg.a (line 1) -> pkg.b (line 2) -> pkg.c (line 3) -> pkg.a"


def test_every_module_has_a_layer(graph):
    missing = sorted(m for m in graph if layer_of(m) < 0)
    assert not missing, f"modules with no layer in tests/test_layers.py LAYERS (add them, per DESIGN.md): {missing}"


def test_no_import_cycles(graph):
    cycles = find_cycles(graph)
    assert not cycles, "import cycles (break them: move the shared piece down a layer):\n" + "\n".join(
        describe(c, graph) for c in cycles)


def upward_imports(edges: Mapping[str, Mapping[str, int]]) -> List[str]:
    """Every edge from a module to a module of a higher layer, described."""
    return [f"{a} (line {line}, layer {LAYERS[layer_of(a)][0]!r}) imports {b} (layer {LAYERS[layer_of(b)][0]!r})"
            for a in sorted(edges) for b, line in sorted(edges[a].items()) if layer_of(b) > layer_of(a)]


def test_no_upward_imports(graph):
    upward = upward_imports(graph)
    assert not upward, ("upward imports (DESIGN.md: a module imports only its own layer or below; move the "
                        "shared piece down a layer and re-export it from its old home):\n" + "\n".join(upward))


def test_strict_rules(graph):
    bad = []
    for a in sorted(graph):
        for b, line in sorted(graph[a].items()):
            if _under(a, LOW) and _under(b, HIGH):
                bad.append(f"{a} (line {line}) imports {b}: errors/ops/config/datasets/models never import "
                           "trainer, features, runner, report or cli")
            if _under(b, ("fdalign_plugins.cli",)) and not _under(a, ("fdalign_plugins.cli",)):
                bad.append(f"{a} (line {line}) imports {b}: nothing but the CLI imports the CLI")
            if _under(a, ("fdalign_plugins",)) and _under(b, ("fdalign_adapters",)):
                bad.append(f"{a} (line {line}) imports {b}: the core never imports the built-in adapters "
                           "(they come through entry points)")
            modes = ("fdalign_plugins.bench.standard", "fdalign_plugins.bench.episodic")
            if _under(a, ("fdalign_plugins.bench.context",) + modes) and b != a and _under(
                    b, modes + ("fdalign_plugins.bench.runner",)):
                bad.append(f"{a} (line {line}) imports {b}: the run context imports no mode and a mode "
                           "imports only the context (bench.runner alone knows both)")
            if _under(b, METHOD_PLUGINS) and not _under(a, METHOD_PLUGINS):
                bad.append(f"{a} (line {line}) imports {b}: nothing imports a built-in method plugin "
                           "(they come through entry points)")
    assert not bad, "\n".join(bad)


def test_the_graph_is_the_real_one(graph):
    """Guards the walker against reading nothing: known edges of today's tree are there."""
    assert sum(map(len, graph.values())) > 100
    assert "fdalign_plugins.adapter_api" in graph["fdalign_adapters.tip"]
    assert "fdalign_plugins.model_registry" in graph["fdalign_plugins.world.model"]


def test_an_upward_import_is_named(graph):
    """The check itself: one upward edge added to the real graph is the one reported."""
    edges = {m: dict(targets) for m, targets in graph.items()}
    edges["fdalign_plugins.config"]["fdalign_plugins.runner"] = 7
    assert upward_imports(edges) == ["fdalign_plugins.config (line 7, layer 'config') imports "
                                     "fdalign_plugins.runner (layer 'bench')"]
