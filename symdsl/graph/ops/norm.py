"""Rules for normalisation layers: ``layer_norm`` (centred) and ``rms_norm``; vector norms.

A norm over the last axis with a gain and a bias: ``call.normalize`` says so, and each analysis
decides what may act on that axis (checker: coordinate moves, or isometries when the gain is
constant and, for LayerNorm, the ones vector is fixed; inference: flags 'ln'/'rms' and records
the norm for folding).

``linalg_vector_norm``/``norm`` with p = 2 is the square root of a sum of squares: ``square``
every axis, ``summed`` over the reduced ones (invariant under isometries of those axes), and the
square root acts ``nonlinear``ly on the others. Hand-written RMSNorms (``x.pow(2).mean(-1)``,
``rsqrt``, a gain multiply) are proved op by op by the elementwise rules.
"""
from __future__ import annotations

from ..walker import Unsupported
from .base import op_rule


def _norm(call, bias_index, centred):
    # x (..., d), normalized_shape (d,), weight (d,), bias (d,)
    x = call.tensor(0)
    shape = call.arg(1)
    n = len(shape) if isinstance(shape, (list, tuple)) else 1
    if n != 1:
        raise Unsupported(f"{call.op} over several axes has no rule")
    gain = 2 if call.has_tensor(2) else None
    bias = bias_index if bias_index is not None and call.has_tensor(bias_index) else None
    call.normalize(x[-1], gain=gain, bias=bias, centred=centred)
    return x


@op_rule("layer_norm", "native_layer_norm")
def layer_norm_rule(call):
    return _norm(call, 3, centred=True)


@op_rule("rms_norm")
def rms_norm_rule(call):
    return _norm(call, None, centred=False)


@op_rule("linalg_vector_norm", "norm")
def vector_norm_rule(call):
    # ||x||_2 over dims: sqrt(sum of squares); keepdim keeps size-1 axes
    x = call.tensor(0)
    p = call.arg(1, 2, name="ord" if call.op == "linalg_vector_norm" else "p")
    if p != 2:
        raise Unsupported(f"{call.op} with p = {p} has no rule (only the Euclidean norm is invariant)")
    dims = call.arg(2, None, name="dim")
    keep = call.arg(3, False, name="keepdim")
    dims = list(range(len(x))) if dims is None or dims == [] else \
        [d % len(x) for d in (dims if isinstance(dims, (list, tuple)) else [dims])]
    squares = [call.square(axis) for axis in x]
    for d in dims:
        call.summed(squares[d])
    out = tuple(call.new_axis(1) if i in dims else axis for i, axis in enumerate(squares) if keep or i not in dims)
    for i, axis in enumerate(out):
        if not (keep and i in dims):
            call.nonlinear(axis, f"the square root of {call.op}")
    return out
