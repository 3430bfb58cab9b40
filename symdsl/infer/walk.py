"""Spec inference as an analysis over the shared graph walk: axis variables instead of site types.

Parameters get one fresh variable per axis; model inputs, constants and non-persistent
buffers get variables flagged ``fixed`` (no symmetry may move them), except a buffer whose value
is all zeros (EVA's ``k_bias``: ``g 0 = 0``), whose variables stay free while only ops that keep
zeros zero read it (as the checker's zero type); each op's rule, from the
same op-rule table the static check uses (:mod:`symdsl.graph.ops`), unites and flags variables
through :class:`~symdsl.infer.unify.InferCall`; the model's outputs are flagged ``fixed`` too
(the draft claims invariance of what the model returns). An op without a rule, or a case its
rule cannot follow, flags everything it touches ``fixed`` and is listed in :attr:`Walk.opaque`:
the draft then leaves those axes unbound rather than guess. Since the checker reads the same
table, a draft never claims a symmetry through an op that ``symdsl check`` cannot follow.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from ..graph.capture_types import CapturedGraph
from ..graph.shapes import ZERO_KEEPING, Stacked
from ..graph.walker import GraphWalker, OpRules, Unsupported
from .unify import InferCall
from .variables import AxisVars


@dataclass
class Walk:
    """The result of one inference walk.

    ``values``: node name -> tuple of variables (one per axis), list (multi-output), Stacked or
    None. ``param_axes``: param node -> its axis variables. ``norms``: ``(node, 'ln'|'rms'|'gain', var,
    weight param node, bias param node, gain form)`` per norm op or per-feature gain (form
    ``'weight'``, or ``'one_plus'`` for a gain stored as an offset from 1). ``uses``: ``(op node, param node, axis,
    'read'|'write', module)`` per parameter axis a contraction reads or writes. ``opaque``:
    ``(node, reason)`` for ops treated conservatively. ``rotary``: ``(var, layout)`` for every axis
    that rotary position embeddings act on (``"half"``: pairs i, i + n/2).
    """

    graph: CapturedGraph
    vars: AxisVars = field(default_factory=AxisVars)
    values: dict[str, Any] = field(default_factory=dict)
    param_axes: dict[str, tuple] = field(default_factory=dict)
    norms: list[tuple] = field(default_factory=list)
    uses: list[tuple] = field(default_factory=list)
    opaque: list[tuple[str, str]] = field(default_factory=list)
    squares: dict[int, int] = field(default_factory=dict)
    low_precision: list[str] = field(default_factory=list)   # op nodes computed below float64
    rotary: list[tuple[int, str]] = field(default_factory=list)   # (var, pair layout) RoPE acts on
    outputs: list[tuple[str, str]] = field(default_factory=list)  # (output name, node) of feature outputs
    constants: set[int] = field(default_factory=set)   # axes of tensors that hold one number everywhere
    zeros: set[int] = field(default_factory=set)       # axes of zero buffers, and of what keeps them (cat ...)


_LOW = (torch.float32, torch.float16, torch.bfloat16)


def _all_vars(value) -> list[int]:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Stacked):
        return [v for m in value.members for v in m]
    if isinstance(value, list):
        return [v for item in value for v in _all_vars(item)]
    return []


class Inference(GraphWalker):
    """The inference walk: values are tuples of axis variables; :meth:`finish` returns the :class:`Walk`."""

    call_class = InferCall

    def __init__(self, graph: CapturedGraph, state_names: set[str], op_rules: OpRules,
                 features: Mapping[int, str] | None = None, buffers: Mapping[str, torch.Tensor] | None = None):
        super().__init__(graph, op_rules)
        self.result = Walk(graph)
        self.result.values = self.values
        self.state_names = state_names
        self.features = dict(features or {})     # output position -> name of a feature output
        self.buffers = dict(buffers or {})       # state-dict name -> tensor, non-persistent ones too

    def buffer(self, name: str):
        names = self.graph.params.get(name, [])
        return self.buffers.get(names[0]) if names else None

    def param(self, node):
        names = self.graph.params.get(node.name, [])
        call = InferCall(self, node)
        if any(n in self.state_names for n in names):
            self.result.param_axes[node.name] = call.fresh(node.shape or ())
            return self.result.param_axes[node.name]
        value = self.buffer(node.name)
        if value is not None and value.numel() and not bool(value.any()):
            axes = call.fresh(node.shape or ())
            self.result.zeros.update(axes)
            return axes
        return call.fresh(node.shape or (), f"non-persistent buffer {names[:1]}")

    def leaf(self, node):
        what = f"model input '{node.name}'" if node.op == "input" else f"constant tensor {node.target}"
        return InferCall(self, node).fresh(node.shape, what) if node.shape is not None else None

    def output(self, node) -> None:
        InferCall(self, node).settle(*self._inputs(node))
        for position, ref in enumerate(node.refs()):
            name = self.features.get(position)
            if name is not None and isinstance(self.values.get(ref.name), tuple):
                # a feature output: it may carry sites, which the draft declares under outputs:
                self.result.outputs.append((name, ref.name))
                continue
            for var in _all_vars(self.values.get(ref.name)):
                self.result.vars.flag(var, "fixed", "returned by the model")

    def _inputs(self, node) -> list[int]:
        return [v for value in self.input_values(node) for v in _all_vars(value)]

    def call_op(self, node):
        for var in self._inputs(node):
            self.result.vars.flag(var, "touched")
        if node.dtype in _LOW and node.op not in ("embedding",):
            self.result.low_precision.append(node.name)     # e.g. a norm that upcasts only to float32
        value = super().call_op(node)
        zeros = self.result.zeros
        if zeros:
            before = set(self._inputs(node))
            if node.op in ZERO_KEEPING:
                # a piece, a copy or a concatenation holding a zero buffer's entries: tracked on
                if before & zeros:
                    zeros.update(v for v in _all_vars(value) if v not in before)
            else:
                # any other op makes the zeros an ordinary tensor: no symmetry may move it
                for var in _all_vars(value):
                    if var in zeros:
                        self.result.vars.flag(var, "fixed", f"a zero buffer made non-zero by {node.op} ({node.name})")
        return value

    def failed(self, call, exc):
        reason = f"{call.where}: {exc.message}" if isinstance(exc, Unsupported) else \
            f"{call.where}: could not interpret ({type(exc).__name__}: {exc})"
        call.settle(*self._inputs(call.node))
        for var in self._inputs(call.node):
            self.result.vars.flag(var, "fixed", reason)
        self.result.opaque.append((call.node.name, reason))
        return call.fresh(call.node.shape, reason)

    def finish(self) -> Walk:
        return self.result


def walk(graph: CapturedGraph, state_names: set[str], op_rules: OpRules,
         features: Mapping[int, str] | None = None, buffers: Mapping[str, torch.Tensor] | None = None) -> Walk:
    """Propagate axis variables through ``graph``; ``state_names`` are the model's state-dict keys;
    ``op_rules`` is the op-rule table (``registries.op_rules``); ``features`` maps positions of
    the graph's outputs to names of feature outputs (:func:`symdsl.infer.outputs.feature_outputs`),
    which are left free to carry sites instead of being fixed; ``buffers`` (``dict(model.named_buffers())``)
    lets the rules read the model's constants (a precomputed RoPE table, a zero bias buffer).

    >>> import torch
    >>> from symdsl.graph import capture
    >>> from symdsl.graph.ops import builtin_op_rules
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    >>> w = walk(capture(net, torch.randn(5, 3)), set(net.state_dict()), builtin_op_rules())
    >>> hidden = w.param_axes["p_0_weight"][0]                 # rows of the first weight
    >>> w.vars.parity_between(hidden, w.param_axes["p_2_weight"][1]), sorted(w.vars.flags(hidden))
    (1, ['nonlinear', 'touched'])
    """
    return Inference(graph, state_names, op_rules, features, buffers).run()
