"""The shape of the code: imports flow one way, and the core never reaches for the plugins.

Imports are read with ``ast`` at every depth (inside functions too), and importing
``a.b.c`` counts as importing ``a`` and ``a.b`` as well (their ``__init__`` runs), except for
a module's own parent packages.
"""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"symdsl": ROOT / "symdsl", "symdsl_builtins": ROOT / "plugins" / "symdsl_builtins"}
# the layers that may load plugins: the boundary (public API, command line) and research code above it
BOUNDARY = ("symdsl.api", "symdsl.cli", "symdsl.experiments", "symdsl.plugins", "symdsl.__main__", "symdsl")


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for file in folder.rglob("*.py"):
            parts = [package, *file.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = file
    return found


MODULES = _modules()


def _owner(name: str) -> str | None:
    """The longest known module that ``name`` (a dotted import target) lies in."""
    parts = name.split(".")
    while parts and ".".join(parts) not in MODULES:
        parts.pop()
    return ".".join(parts) or None


def _imports(module: str, file: Path) -> set[str]:
    is_package = file.name == "__init__.py"
    targets = set()
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            names = [f"{stem}.{alias.name}" for alias in node.names] + [stem]
        else:
            continue
        for name in names:
            owner = _owner(name)
            if owner is None or owner == module or module.startswith(owner + "."):
                continue            # a module's own parent packages are already being imported
            targets.add(owner)
            # importing a.b.c runs a/__init__ and a/b/__init__ too
            parts = owner.split(".")
            for i in range(1, len(parts)):
                ancestor = ".".join(parts[:i])
                if ancestor in MODULES and not module.startswith(ancestor + "."):
                    targets.add(ancestor)
    return targets


GRAPH = nx.DiGraph()
for _name, _file in MODULES.items():
    GRAPH.add_node(_name)
    GRAPH.add_edges_from((_name, target) for target in _imports(_name, _file))


def test_the_module_list_is_complete():
    assert {"symdsl", "symdsl.registry", "symdsl.spec.resolve", "symdsl.api", "symdsl_builtins.plugin"} <= set(MODULES)
    assert len(MODULES) > 100


def test_there_is_no_import_cycle():
    cycles = [sorted(c) for c in nx.strongly_connected_components(GRAPH) if len(c) > 1]
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c[:6]) + ("..." if len(c) > 6 else "")
                                                     for c in cycles)


def test_the_cycle_test_sees_a_cycle_through_a_function_body(tmp_path):
    """The reader counts an import inside a function (the kind that used to hide the cycle)."""
    file = tmp_path / "probe.py"
    file.write_text("def f():\n    from symdsl.api import align\n    return align\n")
    assert "symdsl.api" in _imports("symdsl.groups.probe", file)


CORE = sorted(m for m in MODULES if m.startswith("symdsl.") and m not in BOUNDARY
              and not m.startswith(tuple(b + "." for b in BOUNDARY if b != "symdsl")))


def test_the_core_is_most_of_the_package():
    assert {"symdsl.spec.resolve", "symdsl.groups.base", "symdsl.graph.propagate", "symdsl.match.universe"} <= set(CORE)
    assert not {"symdsl.api.align", "symdsl.cli.main", "symdsl.plugins.manager"} & set(CORE)


@pytest.mark.parametrize("module", CORE)
def test_the_core_never_imports_the_plugin_manager_or_the_builtins(module):
    reachable = nx.descendants(GRAPH, module)
    bad = sorted(m for m in reachable if m.startswith(("symdsl.plugins", "symdsl_builtins", "symdsl.api", "symdsl.cli")))
    assert not bad, f"{module} reaches {bad[:3]}"
