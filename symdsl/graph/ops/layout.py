"""Rules for ops that only move axes: reshapes, transposes, (un)squeezing, expand, copies.

Reshapes go through the shared algebra of :mod:`symdsl.graph.shapes` (factors regroup; a
factor may not be cut where the analysis forbids it; a fused axis cut at its parts count
becomes a :class:`~symdsl.graph.shapes.Stacked` value).
"""
from __future__ import annotations

from ..shapes import PASS_THROUGH, ndim, parts_axes, regroup, reorder
from .base import op_rule
from .rope import INTERLEAVED, rotate_every_two_source


ROTATE_EVERY_TWO = "rotate_every_two (the rotary position embedding)"


@op_rule("view", "reshape", "_unsafe_view", "flatten")
def reshape_rule(call):
    # (b, t, d) -> (b, t, h, k) or back; (b, t, 3d) -> (b, t, 3, h, k) makes a Stacked value;
    # stack((-x[..., 1::2], x[..., ::2]), -1).flatten(-2) is GPT-J's rotate_every_two(x): a fixed
    # map of x's last axis (x: (b, t, h, r) -> (b, t, h, r))
    rope = rotate_every_two_source(call.graph, call.node)
    if rope is not None:
        x = call.as_tensor(call.resolve(rope[0]))
        call.rotary(x[rope[1]], INTERLEAVED, ROTATE_EVERY_TWO)
        return x
    return regroup(call, call.tensor(0), call.shape, parts_axes(call.graph, call.node))


@op_rule("transpose")
def transpose_rule(call):
    x = call.value(0)
    n = ndim(x)
    order = list(range(n))
    d0, d1 = call.arg(1) % n, call.arg(2) % n
    order[d0], order[d1] = order[d1], order[d0]
    return reorder(x, order)


@op_rule("permute")
def permute_rule(call):
    x = call.value(0)
    return reorder(x, [d % ndim(x) for d in call.arg(1)])


@op_rule("t")
def t_rule(call):
    return tuple(reversed(call.tensor(0)))


@op_rule(*PASS_THROUGH)
def identity_rule(call):
    return call.value(0)


@op_rule("assert", "_assert_tensor_metadata")
def assert_rule(call):
    return None


@op_rule("unsqueeze")
def unsqueeze_rule(call):
    x = call.tensor(0)
    dim = call.arg(1) % (len(x) + 1)
    return x[:dim] + (call.new_axis(1),) + x[dim:]


@op_rule("squeeze")
def squeeze_rule(call):
    x = call.tensor(0)
    dims = call.arg(1)
    dims = range(len(x)) if dims is None else dims if isinstance(dims, (list, tuple)) else [dims]
    dims = {d % len(x) for d in dims}
    return tuple(axis for i, axis in enumerate(x) if not (i in dims and call.size(axis) == 1))


@op_rule("expand")
def expand_rule(call):
    # (1, t, d) -> (b, t, d): a size-1 axis repeated; anything added along it is a constant
    x = call.tensor(0)
    shape = list(call.shape)
    lead = len(shape) - len(x)
    out = [call.new_axis(s, broadcast="broadcast by expand") for s in shape[:lead]]
    for axis, size in zip(x, shape[lead:]):
        if call.size(axis) == size:
            out.append(axis)
        else:
            call.fixed(axis, "expand repeats this axis")
            out.append(call.new_axis(size, broadcast="broadcast by expand"))
    return tuple(out)
