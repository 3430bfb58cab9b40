"""One op-rule table for both analyses: the static check and ``symdsl infer`` read the same rules.

Every op has exactly one rule definition (``symdsl.graph.ops``); the table is a value passed
to the analyses (``registries.op_rules``), and a rule added to it changes what both of them do.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType, SimpleNamespace

import pytest
import torch
from torch import nn

import symdsl.graph.ops as ops
from symdsl.check.static import static_check
from symdsl.graph.capture_types import OpNode
from symdsl.graph.ops import builtin_op_rules, op_rule
from symdsl.graph.typecheck import CheckCall, Violation
from symdsl.graph.types import Atom
from symdsl.groups.orthogonal import Orthogonal
from symdsl.groups.permutation import Permutation
from symdsl.errors import UsageError
from symdsl.infer import check_draft, infer_spec
from symdsl.plugins import hookimpl, load
from symdsl.spec import load_spec_text
from symdsl.spec.binding import SiteDef

REGISTRIES = load()


def with_rules(table):
    """The installed plugins' registries with ``table`` as the op rules."""
    return dataclasses.replace(REGISTRIES, op_rules=table)

ROOT = Path(__file__).resolve().parents[1]


def test_each_op_has_exactly_one_rule_definition():
    defined: dict[str, list[str]] = {}
    for path in sorted((ROOT / "symdsl" / "graph" / "ops").glob("*.py")):
        module = __import__(f"symdsl.graph.ops.{path.stem}" if path.stem != "__init__" else "symdsl.graph.ops",
                            fromlist=["_"])
        for name, fn in vars(module).items():
            if inspect.isfunction(fn) and fn.__module__ == module.__name__:
                for op in getattr(fn, "symdsl_ops", ()):
                    defined.setdefault(op, []).append(f"{module.__name__}.{name}")
    assert {op: where for op, where in defined.items() if len(where) > 1} == {}
    table = builtin_op_rules()
    assert set(table) == set(defined) and len(table) > 80
    # the second rule table (symdsl.infer.rules) and its reshape copy are gone
    assert not (ROOT / "symdsl" / "infer" / "rules.py").exists()
    assert not (ROOT / "symdsl" / "infer" / "reshape.py").exists()
    assert builtin_op_rules() is not builtin_op_rules()          # a fresh value, never shared state


def test_core_modules_ask_capabilities_and_do_not_import_plugins():
    # the walk, the shared algebra, the rules and both analyses
    graph = ROOT / "symdsl" / "graph"
    core = [*(graph / name for name in ("walker.py", "shapes.py", "types.py", "typecheck.py", "propagate.py")),
            *(graph / "ops").glob("*.py"), *(ROOT / "symdsl" / "infer").glob("*.py"),
            ROOT / "symdsl" / "check" / "static.py"]
    for path in core:
        text = path.read_text()
        imports = [node for node in ast.walk(ast.parse(text)) if isinstance(node, (ast.Import, ast.ImportFrom))]
        for node in imports:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            assert not any("plugins" in n or "symdsl_builtins" in n for n in names), path
        assert "PERMUTATION_LIKE" not in text and "kind.name ==" not in text and "kind.name in" not in text, path


# -- a toy op: cumsum is linear along the summed axis, so a rule lets symmetries through it ------------
class Cumulative(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(3, 8), nn.Linear(8, 6), nn.Linear(6, 2)

    def forward(self, x):
        return self.fc3(torch.cumsum(self.fc2(torch.relu(self.fc1(x))), dim=0))


def cumulative() -> Cumulative:
    return Cumulative()


@op_rule("cumsum")
def cumsum_rule(call):
    # cumsum(x (n, d), dim=0): running sums along dim mix its positions and leave d alone
    x = call.tensor(0)
    dim = call.arg(1, name="dim") % len(x)
    call.fixed(x[dim], "axis of a running sum")
    return x


class Recording(Mapping):
    """An op-rule table that remembers which ops were looked up in it."""

    def __init__(self, rules):
        self.rules, self.asked = dict(rules), []

    def __getitem__(self, op):
        self.asked.append(op)
        return self.rules[op]

    def __iter__(self):
        return iter(self.rules)

    def __len__(self):
        return len(self.rules)


def test_a_rule_added_to_the_table_changes_both_the_check_and_infer():
    without = infer_spec(cumulative(), factory=f"{__name__}:cumulative", registries=with_rules(builtin_op_rules()))
    assert [s.key for s in without.sites] == ["fc1"] and "cumsum" in without.text

    table = Recording({**builtin_op_rules(), "cumsum": cumsum_rule})
    draft = infer_spec(cumulative(), factory=f"{__name__}:cumulative", registries=with_rules(table))
    assert "cumsum" in table.asked                                          # inference read it ...
    assert sorted(s.size_value for s in draft.sites) == [6, 8]              # ... and fc2 gets a site
    table.asked.clear()
    result = check_draft(draft.text, registries=with_rules(table))
    assert "cumsum" in table.asked and result.ok, result                    # the check read the same table
    # the same draft, checked without the rule: the checker fails closed at cumsum
    report = static_check(load_spec_text(draft.text, "<draft>", trust_code=True), registries=with_rules(builtin_op_rules()))
    assert [f.node for f in report.findings][:1] == ["cumsum"] and "has no symmetry rule" in report.findings[0].message


class CumsumPlugin:
    @hookimpl
    def symdsl_op_rules(self):
        return {"cumsum": cumsum_rule}


def test_a_plugin_s_rule_reaches_both_analyses_through_the_registries():
    registries = load(plugins={"cumsum-plugin": CumsumPlugin()})
    assert registries.op_rules["linear"] is builtin_op_rules()["linear"]       # the built-in plugin's hook
    assert registries.op_rules.origin("cumsum") == "cumsum-plugin"
    draft = infer_spec(cumulative(), factory=f"{__name__}:cumulative", registries=registries)
    assert sorted(s.size_value for s in draft.sites) == [6, 8]
    assert check_draft(draft.text, registries=registries).ok


def test_the_analyses_accept_an_explicit_read_only_table():
    mlp = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
    full = MappingProxyType(builtin_op_rules())
    no_tanh = MappingProxyType({op: rule for op, rule in builtin_op_rules().items() if op != "tanh"})
    assert [s.key for s in infer_spec(mlp, factory="x:y", registries=with_rules(full)).sites] == ["mlp"]
    assert infer_spec(mlp, factory="x:y", registries=with_rules(no_tanh)).sites == []          # fails closed at tanh
    spec = load_spec_text("{symdsl: 1, name: mlp, example: {inputs: {input: {randn: true, shape: [5, 3]}}}, "
                          "sites: {h: {group: permutation, size: 8}}, "
                          "tensors: {0.weight: h _, 0.bias: h, 2.weight: _ h'}, invariant: [2.bias]}", trust_code=True)
    assert static_check(spec, mlp, registries=with_rules(full)).ok
    findings = static_check(spec, mlp, registries=with_rules(no_tanh)).findings
    assert [f.op for f in findings] == ["tanh"] and "has no symmetry rule" in findings[0].message


# -- capabilities, not names ----------------------------------------------------------------------------
class Shuffle(Permutation):
    name = "shuffle"          # a third-party kind: coordinates only move, under another name


class Spin(Orthogonal):
    name = "spin"             # an isometry that is not a coordinate move


def _call(op: str, kind, **options):
    site = SiteDef("s", kind, 4, 4, options=options)
    walker = SimpleNamespace(sites={"s": site}, values={}, parameter=lambda name: None)
    return CheckCall(walker, OpNode(op, op, (), {}, f"aten.{op}.default"))


@pytest.mark.parametrize("kind, nonlinear_ok, shift_ok", [
    (Shuffle(), True, True), (Spin(), False, False), (Spin(), False, True),
])
def test_rules_ask_group_kinds_for_capabilities(kind, nonlinear_ok, shift_ok):
    options = {"preserve": "ones"} if shift_ok and not kind.elementwise_equivariant else {}
    axis = (Atom(4, "s"),)
    for check, ok in ((lambda c: c.nonlinear(axis), nonlinear_ok), (lambda c: c.shift(axis), shift_ok),
                      (lambda c: c.summed(axis), shift_ok)):
        call = _call("gelu", kind, **options)
        if ok:
            check(call)
        else:
            with pytest.raises(Violation):
                check(call)


def test_a_plugin_rule_replaces_the_built_in_one_for_the_same_op():
    class Gelu:
        @hookimpl
        def symdsl_op_rules(self):
            return {"gelu": cumsum_rule}

    registries = load(plugins={"my-plugin": Gelu()})
    assert registries.op_rules["gelu"] is cumsum_rule and registries.op_rules.origin("gelu") == "my-plugin"
    with pytest.raises(UsageError, match="op rule 'gelu' is contributed twice: by my-plugin and by another-plugin"):
        load(plugins={"my-plugin": Gelu(), "another-plugin": Gelu()})       # two third-party rules clash
