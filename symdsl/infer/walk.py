"""Walk a captured graph once, without a spec, and collect what the ops say about every axis.

Parameters get one fresh variable per axis; model inputs, constants and non-persistent
buffers get variables flagged ``fixed`` (no symmetry may move them); each op's rule (see
:mod:`symdsl.infer.rules`) unites and flags variables; the model's outputs are flagged ``fixed``
too (the draft claims invariance of what the model returns). An op without a rule, or one its
rule cannot interpret, flags everything it touches ``fixed`` and is listed in
:attr:`Walk.opaque`: the draft then leaves those axes unbound rather than guess. So does an op
the static checker has no rule for (it fails closed on those), so that a draft never claims a
symmetry that ``symdsl check`` cannot follow.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Container

import torch

from ..graph.capture_types import CapturedGraph
from .reshape import Stacked
from .rules import RULES, Ctx, Opaque
from .variables import AxisVars


@dataclass
class Walk:
    """The result of one inference walk.

    ``values``: node name -> tuple of variables (one per axis), list (multi-output), Stacked or
    None. ``param_axes``: param node -> its axis variables. ``norms``: ``(node, 'ln'|'rms', var,
    weight param node, bias param node)`` per norm op. ``uses``: ``(op node, param node, axis,
    'read'|'write', module)`` per parameter axis a contraction reads or writes. ``opaque``:
    ``(node, reason)`` for ops treated conservatively.
    """

    graph: CapturedGraph
    vars: AxisVars = field(default_factory=AxisVars)
    values: dict[str, Any] = field(default_factory=dict)
    param_axes: dict[str, tuple] = field(default_factory=dict)
    norms: list[tuple] = field(default_factory=list)
    uses: list[tuple] = field(default_factory=list)
    opaque: list[tuple[str, str]] = field(default_factory=list)
    low_precision: list[str] = field(default_factory=list)   # op nodes computed below float64


_LOW = (torch.float32, torch.float16, torch.bfloat16)


def _all_vars(value) -> list[int]:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Stacked):
        return [v for m in value.members for v in m]
    if isinstance(value, list):
        return [v for item in value for v in _all_vars(item)]
    return []


def walk(graph: CapturedGraph, state_names: set[str], checked_ops: Container[str]) -> Walk:
    """Propagate axis variables through ``graph``; ``state_names`` are the model's state-dict keys.

    >>> import torch
    >>> from symdsl.graph import capture
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    >>> from symdsl.plugins import load
    >>> w = walk(capture(net, torch.randn(5, 3)), set(net.state_dict()), load().op_rules)
    >>> hidden = w.param_axes["p_0_weight"][0]                 # rows of the first weight
    >>> w.vars.parity_between(hidden, w.param_axes["p_2_weight"][1]), sorted(w.vars.flags(hidden))
    (1, ['nonlinear', 'touched'])
    """
    result = Walk(graph)
    vars = result.vars
    for node in graph.nodes:
        ctx = Ctx(result, node)
        if node.op == "param":
            names = graph.params.get(node.name, [])
            if any(n in state_names for n in names):
                result.param_axes[node.name] = result.values[node.name] = ctx.fresh(node.shape or ())
            else:
                result.values[node.name] = ctx.fresh(node.shape or (), f"non-persistent buffer {names[:1]}")
            continue
        if node.op in ("input", "constant", "placeholder", "get_attr"):
            what = f"model input '{node.name}'" if node.op == "input" else f"constant tensor {node.target}"
            result.values[node.name] = ctx.fresh(node.shape, what) if node.shape is not None else None
            continue
        inputs = [v for ref in node.refs() for v in _all_vars(result.values.get(ref.name))]
        if node.op == "output":
            for var in inputs:
                vars.flag(var, "fixed", "returned by the model")
            continue
        for var in inputs:
            vars.flag(var, "touched")
        if node.dtype in _LOW and node.op not in ("embedding",):
            result.low_precision.append(node.name)     # e.g. a norm that upcasts only to float32
        rule = RULES.get(node.op)
        try:
            if rule is None:
                raise Opaque(f"no inference rule for op '{node.op}'")
            if node.op not in checked_ops:
                # the static check fails closed on ops it has no rule for: a draft must not claim a
                # symmetry through one, even where inference could follow it
                raise Opaque(f"the static check has no rule for op '{node.op}'")
            result.values[node.name] = rule(ctx)
        except (Opaque, IndexError, TypeError, KeyError, ValueError, AttributeError, ZeroDivisionError) as exc:
            reason = f"{ctx.where}: {exc}" if isinstance(exc, Opaque) else \
                f"{ctx.where}: could not interpret ({type(exc).__name__}: {exc})"
            for var in inputs:
                vars.flag(var, "fixed", reason)
            result.opaque.append((node.name, reason))
            result.values[node.name] = ctx.fresh(node.shape, reason)
    return result
