"""Rules for attention: scaled-dot-product attention and softmax.

SDPA contracts q (primal) with k (dual) on the head dimension, keeps the head axis (which
may carry a head permutation, the same on q, k and v), mixes tokens (token axes must carry
no site), and carries v's types to its output.
"""
from __future__ import annotations

from ..types import axis_typed, normalize, show_axis
from . import PERMUTATION_LIKE, rule
from .elementwise import require_permutation_like
from .linear import contract, same_axis


@rule("scaled_dot_product_attention")
def sdpa_rule(ctx):
    q, k, v = ctx.tensor_arg(0), ctx.tensor_arg(1), ctx.tensor_arg(2)
    mask = ctx.arg_or_kwarg(3, "attn_mask")
    contract(ctx, q[-1], k[-1], "attention scores q·k")
    for name, t in (("query", q), ("key", k), ("value", v)):
        if axis_typed(t[-2]):
            ctx.fail(f"the token axis of the {name} carries {show_axis(t[-2])}")
    for name, t in (("key", k), ("value", v)):
        for i in range(1, len(q) - 1):
            same_axis(ctx, t[-2 - i], q[-2 - i], f"attention {name} head/batch axis")
    for axis in q[:-2]:
        require_permutation_like(ctx, (axis,), "the head axis of attention")
    if mask is not None and any(axis_typed(a) for a in mask):
        ctx.fail("the attention mask carries a site")
    return q[:-1] + (v[-1],)


@rule("softmax", "_softmax", "log_softmax", "_log_softmax")
def softmax_rule(ctx):
    x = ctx.tensor_arg(0)
    dim = ctx.arg(1) % len(x)
    for atom in normalize(x[dim]):
        if atom.site and ctx.kind(atom.site) not in PERMUTATION_LIKE:
            ctx.fail(f"softmax over an axis carrying {ctx.describe(atom.site)}", atom.site)
    require_permutation_like(ctx, tuple(a for i, a in enumerate(x) if i != dim), "softmax")
    return x
