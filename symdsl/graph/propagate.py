"""Propagate symmetry types through a captured graph and collect violations.

Parameters start from the spec's bindings, user inputs carry no site, and each op's rule
computes its output's type. An op without a rule is allowed only when none of its inputs
carries a site (fail closed).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ..spec.binding import ResolvedSpec, TensorBinding
from .rules import Rule, RuleContext, Violation
from .types import Atom, SplitAxis, is_tensor_type, is_typed, normalize, show, sites_in, untyped


@dataclass
class Finding:
    """One violation: which node, where in the user's code, which site and rule, and why."""

    node: str
    op: str
    target: str
    message: str
    site: str | None = None
    rule: str = ""
    source: str | None = None
    code: str | None = None
    module: str | None = None
    spec_entry: str | None = None
    inputs: list[str] = field(default_factory=list)
    tensor_entries: list[str] = field(default_factory=list)   # spec lines of the parameters this node reads

    def __str__(self) -> str:
        where = f" ({short_path(self.source)})" if self.source else ""
        through = f" in {self.module}" if self.module else ""
        entry = f"\n      spec: {self.spec_entry}" if self.spec_entry else ""
        entry += "".join(f"\n      spec: {t}" for t in self.tensor_entries)
        code = f"\n      code: {self.code}" if self.code else ""
        return f"node {self.node} [{self.target}]{where}{through}: {self.message}{code}{entry}"


@dataclass
class Propagation:
    values: dict[str, Any]
    findings: list[Finding]
    unused_tensors: list[str]
    checked_nodes: int


class _Poisoned:
    """The value of a node downstream of a violation: it propagates silently (one report per break)."""

    def __repr__(self) -> str:
        return "<after a violation>"


POISONED = _Poisoned()


def short_path(source: str) -> str:
    """``.../site-packages/timm/layers/mlp.py:49`` -> ``timm/layers/mlp.py:49`` for display."""
    for marker in ("site-packages/", "dist-packages/"):
        if marker in source:
            return source.split(marker, 1)[1]
    return source


def binding_type(binding: TensorBinding):
    """The tensor type a spec binding gives a parameter."""
    axes = []
    for axis in binding.axes:
        parts = tuple(tuple(Atom(f.size, f.site, f.dual) for f in part) for part in axis.parts)
        axes.append(parts[0] if len(parts) == 1 else SplitAxis(parts))
    return tuple(axes)


def _site_entry(resolved: ResolvedSpec, site: str | None) -> str | None:
    if not site or site not in resolved.sites:
        return None
    source = resolved.spec.source
    origin = resolved.sites[site].origin
    line, col = source.where(origin)
    return f"{source.file}:{line}:{col}: {'.'.join(map(str, origin))}"


def propagate(graph, resolved: ResolvedSpec, op_rules: Mapping[str, Rule],
              parameter: Callable[[str], Any] = lambda name: None) -> Propagation:
    """Run every node's rule in order; ``parameter(node_name)`` returns a parameter's actual tensor."""
    values: dict[str, Any] = {}
    findings: list[Finding] = []
    unused: list[str] = []
    declared_outputs = [normalize_type(binding_type(b)) for b in resolved.outputs.values()]
    for node in graph.nodes:
        if node.op == "param":
            names = graph.params.get(node.name, [])
            bound = [n for n in names if n in resolved.tensors]
            values[node.name] = binding_type(resolved.tensors[bound[0]]) if bound else untyped(node.shape or ())
            if bound and not graph.users(node.name):
                unused.extend(bound)
            continue
        if node.op == "input":
            values[node.name] = untyped(node.shape) if node.shape is not None and not _multi(node.shape) else None
            continue
        if node.op == "output":
            for ref in _refs(node.args):
                value = values.get(ref)
                if is_typed(value) and not any(_fits(value, declared) for declared in declared_outputs):
                    site = sites_in(value)[0]
                    findings.append(_finding(graph, node, resolved, Violation(
                        f"the model returns a tensor {show(value)} that carries site {site}; the spec declares no such "
                        "equivariant output (add it under 'outputs', or the symmetry changes what the model returns)",
                        site, "output")))
            continue
        ctx = RuleContext(node, values, resolved.sites, parameter)
        if any(values.get(r) is POISONED for r in _refs((node.args, node.kwargs))):
            values[node.name] = POISONED
            continue
        rule = op_rules.get(node.op)
        try:
            if rule is None:
                inputs = [values.get(r) for r in _refs((node.args, node.kwargs))]
                typed = [v for v in inputs if is_typed(v)]
                if typed:
                    site = sites_in(typed)[0]
                    raise Violation(f"op '{node.op}' has no symmetry rule and its input carries "
                                    f"{ctx.describe(site)}; symdsl fails closed on ops it does not understand "
                                    "(register a rule for it: see docs/checking.md)", site, "no rule")
                values[node.name] = ctx.output_untyped()
            else:
                values[node.name] = rule(ctx)
        except Violation as violation:
            findings.append(_finding(graph, node, resolved, violation, values))
            values[node.name] = POISONED               # stop the cascade: report each break once
        except (IndexError, TypeError, KeyError, AttributeError, ValueError, ZeroDivisionError) as exc:
            findings.append(_finding(graph, node, resolved, Violation(
                f"the rule for '{node.op}' could not interpret this node ({type(exc).__name__}: {exc}); "
                "treated as a violation (fail closed)", None, "internal")))
            values[node.name] = POISONED
    return Propagation(values, findings, unused, len(graph.nodes))


def _fits(value, declared) -> bool:
    """Does an output's type match a declared output pattern ('_' axes of unknown size match any unbound axis)?"""
    if not is_tensor_type(value) or len(value) != len(declared):
        return False
    for axis, want in zip(value, declared):
        if not isinstance(want, SplitAxis) and all(a.site is None and a.size < 0 for a in want):
            if any(a.site for a in (axis.parts[0] if isinstance(axis, SplitAxis) else axis)) or isinstance(axis, SplitAxis):
                return False
            continue
        if normalize(axis) != normalize(want):
            return False
    return True


def normalize_type(value):
    if is_tensor_type(value):
        return tuple(normalize(a) for a in value)
    return value


def _multi(shape) -> bool:
    return bool(shape) and isinstance(shape[0], tuple)


def _refs(obj) -> list[str]:
    from .capture import Ref

    out: list[str] = []
    if isinstance(obj, Ref):
        out.append(obj.name)
    elif isinstance(obj, dict):
        for v in obj.values():
            out.extend(_refs(v))
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            out.extend(_refs(v))
    return out


def _finding(graph, node, resolved, violation: Violation, values=None) -> Finding:
    inputs = [f"{r}: {show(values.get(r))}" for r in _refs(node.args)] if values else []
    tensor_entries = []
    source = resolved.spec.source
    for ref in _refs(node.args):
        for name in graph.params.get(ref, []):
            binding = resolved.tensors.get(name)
            if binding is not None:
                line, col = source.where(binding.origin)
                tensor_entries.append(f"{source.file}:{line}:{col}: {name}: {binding.pattern!r}")
    return Finding(node=node.name, op=node.op, target=node.target, message=violation.message, site=violation.site,
                   rule=violation.rule, source=node.source, code=node.code, module=node.module,
                   spec_entry=_site_entry(resolved, violation.site), inputs=inputs, tensor_entries=tensor_entries)
