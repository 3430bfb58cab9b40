"""The static check as an analysis over the shared graph walk: propagate site types, collect violations.

:class:`TypeCheck` is a :class:`~symdsl.graph.walker.GraphWalker`: parameters start from the
spec's bindings, user inputs carry no site, and each op's rule (from the op-rule table, the
same one inference uses) computes its output's type through :class:`~symdsl.graph.typecheck.CheckCall`.
An op without a rule, or a case its rule cannot follow, is allowed only when none of its
inputs carries a site (fail closed). After a violation everything downstream is skipped, so
each break is reported once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..spec.binding import ResolvedSpec, TensorBinding
from ..spec.pattern import blocks_of
from .capture_types import Ref
from .typecheck import CheckCall, Violation
from .shapes import ZERO_KEEPING
from .types import (Atom, SplitAxis, is_tensor_type, is_typed, normalize, show, sites_in, untyped, without_zeros,
                    zero_axis)
from .walker import GraphWalker, OpRules, Unsupported


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
        parts = [tuple(Atom(f.size, f.site, f.dual) for f in part) for part in axis.parts]
        blocks = []
        for first, count, shared in blocks_of(len(parts), axis.nest):
            if shared:      # (heads [qk | qkp]): the shared factors, then a split of the rest
                rests = SplitAxis(tuple(p[shared:] for p in parts[first:first + count]))
                blocks.append(parts[first][:shared] + (rests,))
            else:
                blocks.append(parts[first])
        axes.append(blocks[0] if len(blocks) == 1 else SplitAxis(tuple(blocks)))
    return tuple(axes)


def _site_entry(resolved: ResolvedSpec, site: str | None) -> str | None:
    if not site or site not in resolved.sites:
        return None
    source = resolved.spec.source
    origin = resolved.sites[site].origin
    line, col = source.where(origin)
    return f"{source.file}:{line}:{col}: {'.'.join(map(str, origin))}"


class TypeCheck(GraphWalker):
    """The static check's walk: values are site types; :meth:`finish` returns a :class:`Propagation`."""

    call_class = CheckCall

    def __init__(self, graph, resolved: ResolvedSpec, op_rules: OpRules,
                 parameter: Callable[[str], Any] = lambda name: None,
                 buffer: Callable[[str], Any] = lambda name: None):
        super().__init__(graph, op_rules)
        self.resolved, self.sites, self.parameter = resolved, resolved.sites, parameter
        self.buffer = buffer
        self.findings: list[Finding] = []
        self.unused: list[str] = []
        self.declared_outputs = [normalize_type(binding_type(b)) for b in resolved.outputs.values()]

    def param(self, node):
        names = self.graph.params.get(node.name, [])
        bound = [n for n in names if n in self.resolved.tensors]
        if bound and not self.graph.users(node.name):
            self.unused.extend(bound)
        if bound:
            return binding_type(self.resolved.tensors[bound[0]])
        value = self.buffer(node.name)
        if value is not None and value.numel() and not bool(value.any()):
            # a zero buffer (EVA's k_bias between q_bias and v_bias): every linear map fixes it
            return tuple(zero_axis(int(s)) for s in node.shape or ())
        return untyped(node.shape or ())

    def leaf(self, node):
        if node.op != "input":
            return CheckCall(self, node).output_untyped()
        return untyped(node.shape) if node.shape is not None and not _multi(node.shape) else None

    def output(self, node) -> None:
        for ref in _refs(node.args):
            value = self.values.get(ref)
            if is_typed(value) and not any(_fits(value, declared) for declared in self.declared_outputs):
                site = sites_in(value)[0]
                self.report(node, Violation(
                    f"the model returns a tensor {show(value)} that carries site {site}; the spec declares no such "
                    "equivariant output (add it under 'outputs', or the symmetry changes what the model returns)",
                    site, "output"), with_inputs=False)

    def call_op(self, node):
        if any(self.values.get(r) is POISONED for r in _refs((node.args, node.kwargs))):
            return POISONED
        try:
            value = super().call_op(node)
            return value if node.op in ZERO_KEEPING else without_zeros(value)
        except Violation as violation:
            self.report(node, violation)
            return POISONED               # stop the cascade: report each break once

    def failed(self, call, exc):
        if isinstance(exc, Unsupported):
            typed = [v for v in self.input_values(call.node) if is_typed(v)]
            if not typed:
                return call.output_untyped()
            site = sites_in(typed)[0]
            if exc.missing:
                message = (f"op '{call.op}' has no symmetry rule and its input carries {call.describe(site)}; symdsl "
                           "fails closed on ops it does not understand (register a rule for it: see docs/checking.md)")
            else:
                message = (f"{exc.message}; its input carries {call.describe(site)} and symdsl fails closed on "
                           "cases its rules cannot follow")
            raise Violation(message, site, "no rule" if exc.missing else call.op)
        self.report(call.node, Violation(
            f"the rule for '{call.op}' could not interpret this node ({type(exc).__name__}: {exc}); "
            "treated as a violation (fail closed)", None, "internal"), with_inputs=False)
        return POISONED

    def report(self, node, violation: Violation, with_inputs: bool = True) -> None:
        self.findings.append(_finding(self.graph, node, self.resolved, violation,
                                      self.values if with_inputs else None))

    def finish(self) -> Propagation:
        return Propagation(self.values, self.findings, self.unused, len(self.graph.nodes))


def propagate(graph, resolved: ResolvedSpec, parameter: Callable[[str], Any] = lambda name: None, *,
              op_rules: OpRules, buffer: Callable[[str], Any] = lambda name: None) -> Propagation:
    """Run every node's rule in order; ``parameter(node_name)`` returns a parameter's actual tensor,
    ``buffer(node_name)`` a buffer's (None for a parameter): a zero buffer fits any site (0 = g 0),
    a precomputed RoPE table is read for its pair layout.

    ``op_rules`` is the op-rule table (``registries.op_rules``; the built-in one is
    :func:`symdsl.graph.ops.builtin_op_rules`).

    >>> import torch
    >>> from symdsl.graph import capture
    >>> from symdsl.graph.ops import builtin_op_rules
    >>> from symdsl.plugins import load
    >>> from symdsl.spec import load_spec_text, resolve
    >>> mlp = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2))
    >>> spec = load_spec_text("{symdsl: 1, name: mlp, sites: {hidden: {group: orthogonal, size: 6}}, "
    ...                       "tensors: {0.weight: hidden _, 0.bias: hidden, 2.weight: _ hidden'}, invariant: [2.bias]}")
    >>> graph = capture(mlp, {"input": torch.randn(3, 4)})
    >>> result = propagate(graph, resolve(spec, mlp, registries=load()), op_rules=builtin_op_rules())
    >>> [(f.op, f.message) for f in result.findings]
    [('tanh', 'site hidden (orthogonal) reaches tanh, which commutes only with permutations')]
    """
    return TypeCheck(graph, resolved, op_rules, parameter, buffer).run()


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


_UPSTREAM_LIMIT = 400     # graph nodes searched back from a violation for the bindings involved


def _bound_params(graph, node, resolved, site: str | None) -> list[str]:
    """The bound tensors a violation involves: the node's own parameter operands, and else those
    upstream of it whose binding carries the violating site (a key bound primal is reported at
    attention, several ops after ``k_proj.weight``: its binding is the line to fix)."""
    direct = [name for ref in _refs(node.args) for name in graph.params.get(ref, []) if name in resolved.tensors]
    if direct or site is None:
        return direct
    found: list[str] = []
    queue, seen = list(_refs(node.args)), set()
    while queue and len(seen) < _UPSTREAM_LIMIT:
        ref = queue.pop(0)
        if ref in seen:
            continue
        seen.add(ref)
        names = [n for n in graph.params.get(ref, []) if n in resolved.tensors]
        if names:
            found += [n for n in names if site in resolved.tensors[n].sites() and n not in found]
            continue
        queue.extend(_refs(graph.node(ref).args))
    return found


def _finding(graph, node, resolved, violation: Violation, values=None) -> Finding:
    inputs = [f"{r}: {show(values.get(r))}" for r in _refs(node.args)] if values else []
    tensor_entries = []
    source = resolved.spec.source
    for name in _bound_params(graph, node, resolved, violation.site):
        binding = resolved.tensors[name]
        line, col = source.where(binding.origin)
        tensor_entries.append(f"{source.file}:{line}:{col}: {name}: {binding.pattern!r}")
    return Finding(node=node.name, op=node.op, target=node.target, message=violation.message, site=violation.site,
                   rule=violation.rule, source=node.source, code=node.code, module=node.module,
                   spec_entry=_site_entry(resolved, violation.site), inputs=inputs, tensor_entries=tensor_entries)
