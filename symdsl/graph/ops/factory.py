"""Rules for tensors made from numbers alone: ``zeros``, ``ones``, ``full``.

Every entry is the same number, so each axis of the result holds copies: it is stated as a
``constant_axis``, a fresh axis that repeats a value like ``expand``'s. Inference does not let
such an axis join the spaces it is added to (one zero tensor added to every block's scores
does not tie the blocks' heads together). Adding it to an
axis that carries a site is then a constant shift (T5's cross-attention position bias is
``zeros(1, heads, q, k)`` added to the scores: harmless under a head permutation).
"""
from __future__ import annotations

from .base import op_rule


@op_rule("zeros", "ones", "full")
def constant_fill_rule(call):
    shape = call.node.shape
    if not isinstance(shape, tuple) or not all(isinstance(n, int) for n in shape):
        raise ValueError(f"{call.op} of an unknown shape")
    why = f"{call.op}: every entry is the same number"
    return tuple(call.constant_axis(n, why) for n in shape)


__all__ = ["constant_fill_rule"]
