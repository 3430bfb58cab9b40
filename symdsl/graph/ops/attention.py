"""Rules for attention: scaled-dot-product attention and softmax.

SDPA contracts q (primal) with k (dual) on the head dimension, keeps the head axes (the same
on q, k and v, and only coordinate moves commute with the per-head softmax), mixes tokens (no
symmetry may move a token axis), and carries v's last axis to its output.
"""
from __future__ import annotations

from ..walker import Unsupported
from .base import op_rule


@op_rule("scaled_dot_product_attention")
def sdpa_rule(call):
    # q (b, h, t_q, k), k (b, h, t_k, k), v (b, h, t_k, k_v), mask (.., t_q, t_k) -> (b, h, t_q, k_v)
    q, k, v = call.tensor(0), call.tensor(1), call.tensor(2)
    if call.node.kwargs.get("enable_gqa") or not len(q) == len(k) == len(v) >= 2:
        raise Unsupported("grouped-query attention has no rule")
    call.contract(q[-1], k[-1], "attention scores q·k")     # keys live on the dual of the queries
    call.hint(q[-1], "qk")
    call.hint(v[-1], "ov")
    for t in (q, k, v):
        call.fixed(t[-2], "token axis of attention")
    call.same(k[-2], v[-2], "attention key/value token axis")
    for i in range(len(q) - 2):
        if len({call.size(t[i]) for t in (q, k, v)}) != 1:
            raise Unsupported("attention heads broadcast (grouped-query or multi-query attention)")
        call.same(k[i], q[i], "attention key head/batch axis")
        call.same(v[i], q[i], "attention value head/batch axis")
        call.nonlinear(q[i], "the head axis of attention")
        call.hint(q[i], "heads")
    if call.has_tensor(3, name="attn_mask"):
        mask = call.tensor(3, name="attn_mask")
        scores = q[:-1] + (k[-2],)
        for i in range(1, min(len(mask), len(scores)) + 1):
            if not call.is_unit(mask[-i]):
                call.same(mask[-i], scores[-i], "attention mask")
    return q[:-1] + (v[-1],)


@op_rule("softmax", "_softmax", "log_softmax", "_log_softmax")
def softmax_rule(call):
    # softmax(x, dim): normalises exp(x) along dim: coordinatewise nonlinear on every axis
    x = call.tensor(0)
    for axis in x:
        call.nonlinear(axis)
    return x
