"""Rules for contractions: linear, addmm, matmul, convolution, embedding.

A contraction sums an activation axis against a weight axis: the weight's axis is the dual
of the activation's (``call.contract``), its other axis writes the output (``call.writes``),
and a bias is the same space as the output axis it is added to.
"""
from __future__ import annotations

from ..capture_types import Ref
from ..shapes import PASS_THROUGH
from ..walker import Unsupported
from .base import op_rule
from .elementwise import broadcast


@op_rule("linear")
def linear_rule(call):
    # x (..., in) · w (out, in)^T + b (out,) -> (..., out)
    x, w = call.tensor(0), call.tensor(1)
    call.contract(x[-1], w[1], "linear")
    call.reads(1, 1)
    call.writes(1, 0)
    if call.has_tensor(2, name="bias"):
        b = call.tensor(2, name="bias")
        call.same(b[0], w[0], "linear bias")
        call.writes(2, 0)
    return x[:-1] + (w[0],)


@op_rule("addmm")
def addmm_rule(call):
    # bias (out,) + m1 (n, in) @ m2 (in, out): GPT-2's Conv1D, whose weight is stored (in, out)
    bias, m1, m2 = call.tensor(0), call.tensor(1), call.tensor(2)
    call.contract(m1[1], m2[0], "addmm")
    call.reads(2, 0)
    call.writes(2, 1)
    out = (m1[0], m2[1])
    if len(bias) >= 1:
        if call.is_unit(bias[-1]):
            call.shift(out[1])
        else:
            call.same(bias[-1], out[1], "addmm bias")
            call.writes(0, len(bias) - 1)
    return out


@op_rule("mm", "matmul", "bmm")
def matmul_rule(call):
    # a (*batch, n, m) @ b (*batch, m, p) -> (*batch, n, p); a 1-d operand contracts its only axis
    a, b = call.tensor(0), call.tensor(1)
    if len(b) == 1:
        call.contract(a[-1], b[0], call.op)
        return a[:-1]
    if len(a) == 1:
        call.contract(a[0], b[-2], call.op)
        return b[:-2] + (b[-1],)
    call.contract(a[-1], b[-2], call.op)
    call.reads(1, len(b) - 2)
    call.writes(1, len(b) - 1)
    batch = broadcast(call, [a[:-2], b[:-2]], f"{call.op} batch axis", elementwise=False) \
        if len(a) > 2 or len(b) > 2 else ()
    if call.param(0) is None and call.param(1) is None:
        # two activations meet: attention written with matmuls (q @ k^T, then probs @ v)
        if _from_softmax(call.graph, call.node.args[0]):
            call.hint(b[-1], "ov")
        else:
            call.hint(a[-1], "qk")
        for axis in batch:
            call.hint(axis, "heads")
    return batch + (a[-2], b[-1])


def _from_softmax(graph, arg, depth: int = 0) -> bool:
    if not isinstance(arg, Ref) or depth > 6:
        return False
    node = graph.node(arg.name)
    if node.op in ("softmax", "log_softmax"):
        return True
    return node.op in PASS_THROUGH + ("neg", "positive", "dropout", "view", "reshape") and bool(node.args) and \
        _from_softmax(graph, node.args[0], depth + 1)


@op_rule("conv1d", "conv2d", "conv3d", "convolution")
def conv_rule(call):
    # x (b, c_in, *spatial) * w (c_out, c_in, *kernel) + b (c_out,): channels contract like a
    # linear layer; kernel taps and spatial positions mix, so no symmetry may move them
    x, w = call.tensor(0), call.tensor(1)
    if call.arg(6, 1) not in (None, 1):
        raise Unsupported("grouped convolution on a channel axis has no rule")
    for axis in x[2:] + w[2:]:
        call.fixed(axis, "spatial axis of a convolution")
    call.contract(x[1], w[1], call.op)
    call.reads(1, 1)
    call.writes(1, 0)
    if call.has_tensor(2):
        b = call.tensor(2)
        call.same(b[0], w[0], "convolution bias")
        call.writes(2, 0)
    spatial = tuple(call.new_axis(s, "spatial axis of a convolution")
                    for s in call.shape[2:])
    return (x[0], w[0]) + spatial


@op_rule("embedding")
def embedding_rule(call):
    # w (vocab, d)[idx (...)] -> (..., d): rows are picked by integer ids, so they cannot move
    w, idx = call.tensor(0), call.tensor(1)
    call.fixed(w[0], "embedding rows, indexed by integer ids")
    for axis in idx:
        call.fixed(axis, "embedding indices")
    call.writes(0, 1)
    return idx + (w[1],)
