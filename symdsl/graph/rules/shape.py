"""Rules for ops that only move data around: reshape, transpose, split, select, cat, ..."""
from __future__ import annotations

from ..types import Atom, SplitAxis, Stacked, axis_size, axis_typed, is_tensor_type, normalize, show_axis, untyped_axis
from . import rule


# -- reshape ------------------------------------------------------------------------------
class _Opaque:
    """A fused axis inside a reshape: it may stay whole, or be cut into (parts, rest...)."""

    def __init__(self, split: SplitAxis):
        self.split, self.size, self.site = split, split.size, None


def _flatten(tt) -> list:
    items = []
    for axis in tt:
        if isinstance(axis, SplitAxis):
            items.append(_Opaque(axis))
        else:
            items.extend(a for a in normalize(axis) if not (a.site is None and a.size == 1))
    return items


def regroup(ctx, tt, shape):
    """Type of ``tt`` viewed as ``shape``: factors regroup; a bound factor may not be cut."""
    shape = [int(s) for s in shape]
    pending = _flatten(tt)
    out: list = []
    for index, size in enumerate(shape):
        group, prod = [], 1
        if size == 1:
            if pending and pending[0].site and pending[0].size == 1:
                group.append(pending.pop(0))
            out.append(tuple(group) or untyped_axis(1))
            continue
        while prod < size:
            if not pending:
                ctx.fail(f"reshape to {tuple(shape)} does not match the input's factors")
            item = pending.pop(0)
            if isinstance(item, _Opaque):
                if prod == 1 and item.size == size:
                    out.append(item.split)
                    prod = size
                    group = None
                    break
                parts = item.split.parts
                if prod == 1 and size == len(parts) and len({tuple(normalize(p)) for p in map(_sizes, parts)}) == 1:
                    return _stack(ctx, out, parts, pending, shape[index + 1:], index)
                ctx.fail(f"reshape cuts the fused axis {item.split} across its parts")
            if prod * item.size <= size and size % (prod * item.size) == 0:
                group.append(item)
                prod *= item.size
            else:
                need = size // prod
                if item.site:
                    ctx.fail(f"reshape to {tuple(shape)} cuts factor {item} (size {item.size}) of "
                             f"{ctx.describe(item.site)}: the factor order or sizes of this axis are wrong",
                             item.site)
                if need <= 0 or item.size % need:
                    ctx.fail(f"reshape to {tuple(shape)} does not match the input's factors")
                group.append(Atom(need))
                pending.insert(0, Atom(item.size // need))
                prod = size
        if group is not None:
            out.append(tuple(group))
    if any(p.site for p in pending if not isinstance(p, _Opaque)) or any(isinstance(p, _Opaque) for p in pending):
        ctx.fail(f"reshape to {tuple(shape)} leaves factors unplaced")
    return tuple(out)


def _sizes(part):
    return tuple(Atom(a.size) for a in part)


def _stack(ctx, prefix, parts, pending, rest_shape, axis):
    members = []
    for part in parts:
        member_rest = regroup(ctx, (tuple(part),) + tuple((p,) if isinstance(p, Atom) else (p.split,) for p in pending),
                              rest_shape)
        members.append(tuple(prefix) + (untyped_axis(len(parts)),) + member_rest)
    return Stacked(axis, tuple(members))


@rule("view", "reshape", "_unsafe_view")
def reshape_rule(ctx):
    x = ctx.tensor_arg(0)
    shape = ctx.node.shape
    return regroup(ctx, x, shape)


@rule("flatten")
def flatten_rule(ctx):
    return regroup(ctx, ctx.tensor_arg(0), ctx.node.shape)


# -- reordering -------------------------------------------------------------------------------
def _reorder(value, order):
    if isinstance(value, Stacked):
        return Stacked(order.index(value.axis), tuple(tuple(m[i] for i in order) for m in value.members))
    return tuple(value[i] for i in order)


def _ndim(value):
    return len(value.members[0]) if isinstance(value, Stacked) else len(value)


@rule("transpose")
def transpose_rule(ctx):
    x = ctx.arg(0)
    n = _ndim(x)
    d0, d1 = ctx.arg(1) % n, ctx.arg(2) % n
    order = list(range(n))
    order[d0], order[d1] = order[d1], order[d0]
    return _reorder(x, order)


@rule("t")
def t_rule(ctx):
    x = ctx.tensor_arg(0)
    return tuple(reversed(x))


@rule("permute")
def permute_rule(ctx):
    x = ctx.arg(0)
    n = _ndim(x)
    return _reorder(x, [d % n for d in ctx.arg(1)])


@rule("identity", "contiguous", "clone", "alias", "to", "detach", "lift_fresh_copy", "type_as")
def identity_rule(ctx):
    return ctx.arg(0)


@rule("assert", "_assert_tensor_metadata")
def assert_rule(ctx):
    return None


@rule("unsqueeze")
def unsqueeze_rule(ctx):
    x = ctx.tensor_arg(0)
    dim = ctx.arg(1)
    dim = dim % (len(x) + 1)
    return x[:dim] + (untyped_axis(1),) + x[dim:]


@rule("squeeze")
def squeeze_rule(ctx):
    x = ctx.tensor_arg(0)
    dims = ctx.arg(1) if len(ctx.node.args) > 1 else None
    if dims is None:
        dims = [i for i, a in enumerate(x) if axis_size(a) == 1]
    dims = [d % len(x) for d in (dims if isinstance(dims, (list, tuple)) else [dims])]
    return tuple(a for i, a in enumerate(x) if not (i in dims and axis_size(a) == 1))


@rule("expand")
def expand_rule(ctx):
    x = ctx.tensor_arg(0)
    shape = list(ctx.node.shape)
    lead = len(shape) - len(x)
    out = [untyped_axis(s) for s in shape[:lead]]
    for axis, size in zip(x, shape[lead:]):
        if axis_size(axis) == size:
            out.append(axis)
        elif axis_typed(axis):
            ctx.fail(f"expand repeats an axis carrying {show_axis(axis)}")
        else:
            out.append(untyped_axis(size))
    return tuple(out)


# -- splitting and selecting ------------------------------------------------------------------
def _split_sizes(total, spec):
    if isinstance(spec, int):
        sizes = [spec] * (total // spec)
        if total % spec:
            sizes.append(total % spec)
        return sizes
    return list(spec)


def _cut_axis(ctx, axis, sizes, what):
    """Types of the pieces of one axis cut into consecutive ``sizes``."""
    if not axis_typed(axis):
        return [untyped_axis(s) for s in sizes]
    if isinstance(axis, SplitAxis) and [axis_size(p) for p in axis.parts] == list(sizes):
        return list(axis.parts)
    site = next(a.site for a in (axis.parts[0] if isinstance(axis, SplitAxis) else axis) if a.site) \
        if not isinstance(axis, SplitAxis) else None
    ctx.fail(f"{what} cuts the axis {show_axis(axis)} into {list(sizes)}, which is not its declared parts "
             "(check the order and sizes of the fused split in the spec)", site)


@rule("split", "split_with_sizes")
def split_rule(ctx):
    x = ctx.tensor_arg(0)
    dim = (ctx.arg(2) if len(ctx.node.args) > 2 else ctx.kwarg("dim", 0)) % len(x)
    sizes = _split_sizes(axis_size(x[dim]), ctx.arg(1))
    pieces = _cut_axis(ctx, x[dim], sizes, "split")
    return tuple(x[:dim] + (p,) + x[dim + 1:] for p in pieces)


@rule("chunk")
def chunk_rule(ctx):
    x = ctx.tensor_arg(0)
    chunks = ctx.arg(1)
    dim = (ctx.arg(2) if len(ctx.node.args) > 2 else 0) % len(x)
    total = axis_size(x[dim])
    size = -(-total // chunks)
    pieces = _cut_axis(ctx, x[dim], _split_sizes(total, size), "chunk")
    return tuple(x[:dim] + (p,) + x[dim + 1:] for p in pieces)


@rule("unbind")
def unbind_rule(ctx):
    x = ctx.arg(0)
    dim = ctx.arg(1) if len(ctx.node.args) > 1 else 0
    if isinstance(x, Stacked):
        dim %= len(x.members[0])
        if dim != x.axis:
            ctx.fail("unbind of a fused tensor along an axis other than its parts axis")
        return tuple(m[:dim] + m[dim + 1:] for m in x.members)
    dim %= len(x)
    if axis_typed(x[dim]):
        ctx.fail(f"unbind along an axis carrying {show_axis(x[dim])}", _first_site(x[dim]))
    return tuple(x[:dim] + x[dim + 1:] for _ in range(axis_size(x[dim])))


@rule("getitem")
def getitem_rule(ctx):
    container, index = ctx.arg(0), ctx.arg(1)
    if isinstance(container, tuple) and not is_tensor_type(container) and isinstance(index, int):
        return container[index]
    if is_tensor_type(container) and any(axis_typed(a) for a in container):
        ctx.fail("tensor indexing on a tensor that carries sites has no rule; use select/slice forms")
    return ctx.output_untyped()


@rule("select")
def select_rule(ctx):
    x, dim, index = ctx.arg(0), ctx.arg(1), ctx.arg(2)
    if isinstance(x, Stacked):
        dim %= len(x.members[0])
        if dim != x.axis:
            ctx.fail("select on a fused tensor along an axis other than its parts axis")
        member = x.members[index]
        return member[:dim] + member[dim + 1:]
    dim %= len(x)
    if axis_typed(x[dim]):
        ctx.fail(f"select picks one index of an axis carrying {show_axis(x[dim])}", _first_site(x[dim]))
    return x[:dim] + x[dim + 1:]


@rule("slice")
def slice_rule(ctx):
    x = ctx.tensor_arg(0)
    dim = (ctx.arg(1) if len(ctx.node.args) > 1 else 0) % len(x)
    size = ctx.node.shape[dim]
    if size == axis_size(x[dim]):
        return x
    if axis_typed(x[dim]):
        ctx.fail(f"slice takes part of an axis carrying {show_axis(x[dim])}", _first_site(x[dim]))
    return x[:dim] + (untyped_axis(size),) + x[dim + 1:]


@rule("cat", "concat", "concatenate")
def cat_rule(ctx):
    tensors = [t for t in ctx.arg(0) if t is not None]
    dim = ctx.arg(1) if len(ctx.node.args) > 1 else ctx.kwarg("dim", 0)
    ndim = len(tensors[0])
    dim %= ndim
    for other in tensors[1:]:
        for i in range(ndim):
            if i != dim and normalize(other[i]) != normalize(tensors[0][i]):
                ctx.fail(f"cat joins tensors whose axis {i} differ: {show_axis(tensors[0][i])} vs {show_axis(other[i])}",
                         _first_site(other[i]) or _first_site(tensors[0][i]))
    pieces = [t[dim] for t in tensors]
    joined = untyped_axis(sum(axis_size(p) for p in pieces)) if not any(axis_typed(p) for p in pieces) \
        else SplitAxis(tuple(p for p in pieces))
    return tensors[0][:dim] + (joined,) + tensors[0][dim + 1:]


@rule("stack")
def stack_rule(ctx):
    tensors = ctx.arg(0)
    dim = (ctx.arg(1) if len(ctx.node.args) > 1 else 0) % (len(tensors[0]) + 1)
    for other in tensors[1:]:
        if tuple(map(normalize, other)) != tuple(map(normalize, tensors[0])):
            ctx.fail("stack joins tensors of different types")
    t = tensors[0]
    return t[:dim] + (untyped_axis(len(tensors)),) + t[dim:]


def _first_site(axis):
    from ..types import atoms_of

    return next((a.site for a in atoms_of(axis) if a.site), None)
