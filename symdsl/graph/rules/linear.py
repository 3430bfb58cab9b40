"""Rules for contractions: linear, addmm, matmul, conv2d, embedding.

A contraction pairs two axes: each pair of bound factors must be the same site with
opposite variance (primal with dual), unless the group is self-dual (permutation,
orthogonal) where g^-T = g. A bound factor may never meet an unbound one.
"""
from __future__ import annotations

from ..types import SplitAxis, atoms_of, axis_size, axis_typed, normalize, show_axis, untyped_axis
from . import rule


def contract(ctx, left, right, what: str) -> None:
    """Check that axis ``left`` (activation side) may be summed against axis ``right``."""
    if not axis_typed(left) and not axis_typed(right):
        return
    if isinstance(left, SplitAxis) or isinstance(right, SplitAxis):
        if not (isinstance(left, SplitAxis) and isinstance(right, SplitAxis) and len(left.parts) == len(right.parts)):
            ctx.fail(f"{what} contracts a fused axis with an axis of another structure: {show_axis(left)} · {show_axis(right)}")
        for a, b in zip(left.parts, right.parts):
            contract(ctx, a, b, what)
        return
    la, ra = list(normalize(left)), list(normalize(right))
    if [a.size for a in la] != [b.size for b in ra] or [a.site for a in la] != [b.site for b in ra]:
        site = next((a.site for a in la + ra if a.site), None)
        ctx.fail(f"{what} contracts {show_axis(left)} with {show_axis(right)}: the same sites must meet factor by "
                 "factor (a reader's input axis must be bound to the site its input carries)", site)
    for a, b in zip(la, ra):
        if a.site and a.dual == b.dual and not ctx.sites[a.site].kind.self_dual:
            side = "dual" if a.dual else "primal"
            ctx.fail(f"{what} contracts {ctx.describe(a.site)} with itself, both sides {side}: one side must be "
                     f"dual (g^-T), e.g. write {a.site}' on the reader's input axis or on the key side", a.site)


def same_axis(ctx, a, b, what: str) -> None:
    """Two axes that must carry exactly the same type (a bias and the output it is added to)."""
    if normalize(a) != normalize(b):
        site = next((x.site for x in atoms_of(a) + atoms_of(b) if x.site), None)
        ctx.fail(f"{what}: {show_axis(a)} does not match {show_axis(b)}", site)


@rule("linear")
def linear_rule(ctx):
    x, w = ctx.tensor_arg(0), ctx.tensor_arg(1)
    b = ctx.arg_or_kwarg(2, "bias")
    contract(ctx, x[-1], w[1], "linear")
    out_axis = w[0]
    if b is not None:
        same_axis(ctx, b[0], out_axis, "linear bias")
    return x[:-1] + (out_axis,)


@rule("addmm")
def addmm_rule(ctx):
    bias, m1, m2 = ctx.tensor_arg(0), ctx.tensor_arg(1), ctx.tensor_arg(2)
    contract(ctx, m1[1], m2[0], "addmm")
    out = (m1[0], m2[1])
    if bias is not None and len(bias) >= 1:
        same_axis(ctx, bias[-1], out[1], "addmm bias")
    return out


@rule("mm", "matmul", "bmm")
def matmul_rule(ctx):
    a, b = ctx.tensor_arg(0), ctx.tensor_arg(1)
    if len(b) == 1:
        contract(ctx, a[-1], b[0], ctx.node.op)
        return a[:-1]
    if len(a) == 1:
        contract(ctx, a[0], b[-2], ctx.node.op)
        return b[:-2] + (b[-1],)
    contract(ctx, a[-1], b[-2], ctx.node.op)
    batch_a, batch_b = a[:-2], b[:-2]
    n = max(len(batch_a), len(batch_b))
    batch = []
    for i in range(1, n + 1):
        x = batch_a[-i] if i <= len(batch_a) else untyped_axis(1)
        y = batch_b[-i] if i <= len(batch_b) else untyped_axis(1)
        if axis_size(x) == 1 and not axis_typed(x):
            batch.append(y)
        elif axis_size(y) == 1 and not axis_typed(y):
            batch.append(x)
        else:
            same_axis(ctx, x, y, f"{ctx.node.op} batch axis")
            batch.append(x)
    return tuple(reversed(batch)) + (a[-2], b[-1])


@rule("conv2d", "convolution", "conv1d")
def conv_rule(ctx):
    x, w = ctx.tensor_arg(0), ctx.tensor_arg(1)
    b = ctx.arg(2)
    groups = ctx.arg(6) if len(ctx.node.args) > 6 else 1
    if groups not in (None, 1) and (axis_typed(x[1]) or axis_typed(w[0])):
        ctx.fail("grouped convolution on a channel axis that carries a site has no rule")
    for axis in list(x[2:]) + list(w[2:]):
        if axis_typed(axis):
            ctx.fail(f"convolution over a spatial axis carrying {show_axis(axis)}")
    contract(ctx, x[1], w[1], ctx.node.op)
    if b is not None:
        same_axis(ctx, b[0], w[0], "convolution bias")
    return (x[0], w[0]) + tuple(untyped_axis(s) for s in ctx.node.shape[2:])


@rule("embedding")
def embedding_rule(ctx):
    weight, indices = ctx.tensor_arg(0), ctx.tensor_arg(1)
    if axis_typed(weight[0]):
        ctx.fail(f"embedding rows (the vocabulary axis) carry {show_axis(weight[0])}")
    if any(axis_typed(a) for a in indices):
        ctx.fail("embedding indices carry a site")
    return tuple(indices) + (weight[1],)
