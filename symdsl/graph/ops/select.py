"""Rules for ops that cut, pick and join tensors: split, chunk, unbind, select, slice, cat, stack.

Cutting an axis into pieces is allowed only where the analysis can follow it (the parts of a
fused q | k | v axis); picking entries of an axis (select, unbind, slice) fixes that axis, except
a slice of a fused axis at its parts' boundaries (which gives those parts) and the pieces RoPE's
``rotate_half``/``rotate_every_two`` take apart and put back;
``cat`` joins pieces into a fused axis; a :class:`~symdsl.graph.shapes.Stacked` value is
taken apart along its parts axis.
"""
from __future__ import annotations

from ..shapes import Stacked, ndim
from ..walker import Unsupported
from .base import op_rule
from .rope import HALF, rotate_every_two_uses, rotate_half_source, rotate_half_uses

ROTATE_HALF = "rotate_half (the rotary position embedding)"


def _sizes(total: int, spec) -> list[int]:
    if isinstance(spec, int):
        return [spec] * (total // spec) + ([total % spec] if total % spec else [])
    return [int(s) for s in spec]


def _pieces(call, x, dim, sizes, what):
    return [x[:dim] + (piece,) + x[dim + 1:] for piece in call.split_axis(x[dim], sizes, what)]


@op_rule("split", "split_with_sizes")
def split_rule(call):
    # (b, t, 3d) split 3d -> three (b, t, d)
    x = call.tensor(0)
    dim = call.arg(2, 0, name="dim") % len(x)
    return _pieces(call, x, dim, _sizes(call.size(x[dim]), call.arg(1)), "split")


@op_rule("chunk")
def chunk_rule(call):
    x = call.tensor(0)
    dim = call.arg(2, 0, name="dim") % len(x)
    total = call.size(x[dim])
    return _pieces(call, x, dim, _sizes(total, -(-total // call.arg(1))), "chunk")


def _take_part(call, x, dim, what):
    """Members of a Stacked value along its parts axis ``dim`` (the parts axis dropped)."""
    dim %= ndim(x)
    if dim != x.axis:
        raise Unsupported(f"{what} on a fused tensor along an axis other than its parts axis")
    return [m[:dim] + m[dim + 1:] for m in x.members]


@op_rule("unbind")
def unbind_rule(call):
    x, dim = call.value(0), call.arg(1, 0, name="dim")
    if isinstance(x, Stacked):
        return _take_part(call, x, dim, "unbind")
    x = call.as_tensor(x)
    dim %= len(x)
    call.fixed(x[dim], "unbind picks entries of this axis")
    return [x[:dim] + x[dim + 1:] for _ in range(call.size(x[dim]))]


@op_rule("select")
def select_rule(call):
    x, dim, index = call.value(0), call.arg(1), call.arg(2)
    if isinstance(x, Stacked):
        if not isinstance(index, int):
            raise Unsupported("select on a fused tensor with a computed index")
        return _take_part(call, x, dim, "select")[index]
    x = call.as_tensor(x)
    dim %= len(x)
    call.fixed(x[dim], "select picks one entry of this axis")
    return x[:dim] + x[dim + 1:]


@op_rule("slice")
def slice_rule(call):
    x = call.tensor(0)
    dim = call.arg(1, 0) % len(x)
    size, total = call.shape[dim], call.size(x[dim])
    if size == total:
        return x
    if rotate_half_uses(call.graph, call.node) or rotate_every_two_uses(call.graph, call.node):
        # a piece of x used only (through a neg) to build rotate_half(x) or rotate_every_two(x):
        # the cat (or flatten) states what it does to x, and no other op sees this piece
        return x[:dim] + (call.new_axis(size),) + x[dim + 1:]
    if size == 0:
        # an empty slice reads nothing (full rotary's pass-through part q[..., head_dim:])
        return x[:dim] + (call.new_axis(0),) + x[dim + 1:]
    start, step = call.arg(2, 0) or 0, call.arg(4, 1) or 1
    if step == 1 and isinstance(start, int):
        # a range: the parts of a fused axis there (Phi-3's qkv[..., :q], q[..., :rotary_dim]), else cut
        start = min(max(start + total if start < 0 else start, 0), total)
        piece = call.take(x[dim], start, size, "slice takes part of this axis")
        return x[:dim] + (piece,) + x[dim + 1:]
    call.fixed(x[dim], "slice takes part of this axis")
    return x[:dim] + (call.new_axis(size, "slice takes part of this axis"),) + x[dim + 1:]


@op_rule("getitem")
def getitem_rule(call):
    # picks one output of a multi-output op (split, unbind, ...); tensor indexing has no rule
    container, index = call.value(0), call.arg(1)
    if isinstance(container, list) and isinstance(index, int):
        return container[index]
    raise Unsupported("tensor indexing on a tensor that carries sites has no rule; use select/slice forms")


@op_rule("cat", "concat", "concatenate")
def cat_rule(call):
    # cat([(b, t, d1), (b, t, d2)], -1) -> (b, t, [d1 | d2]): the other axes are one space;
    # cat((-x[..., n/2:], x[..., :n/2]), -1) is rotate_half(x): a fixed map of x's last axis
    rope = rotate_half_source(call.graph, call.node)
    if rope is not None:
        x = call.as_tensor(call.resolve(rope[0]))
        call.rotary(x[rope[1]], HALF, ROTATE_HALF)
        return x
    tensors = [call.as_tensor(t) for t in call.value(0)]
    if not tensors or len({len(t) for t in tensors}) != 1:
        raise Unsupported("cat of tensors of different ranks")
    dim = call.arg(1, 0, name="dim") % len(tensors[0])
    for i in range(len(tensors[0])):
        if i != dim:
            for other in tensors[1:]:
                call.same(other[i], tensors[0][i], f"cat axis {i}")
    joined = call.join_axes([t[dim] for t in tensors])
    return tensors[0][:dim] + (joined,) + tensors[0][dim + 1:]


@op_rule("stack")
def stack_rule(call):
    # stack([x, y], dim) -> a new axis indexing the inputs, which are one type
    tensors = [call.as_tensor(t) for t in call.value(0)]
    if not tensors:
        raise Unsupported("stack of non-tensors")
    for other in tensors[1:]:
        for a, b in zip(other, tensors[0]):
            call.same(a, b, "stack")
    dim = call.arg(1, 0, name="dim") % (len(tensors[0]) + 1)
    new = call.new_axis(len(tensors), "stack index")
    return tensors[0][:dim] + (new,) + tensors[0][dim:]
