"""Rules for normalisation layers: ``layer_norm`` (centred) and ``rms_norm``.

A norm over the last axis with a gain and a bias: ``call.normalize`` says so, and each analysis
decides what may act on that axis (checker: coordinate moves, or isometries when the gain is
constant and, for LayerNorm, the ones vector is fixed; inference: flags 'ln'/'rms' and records
the norm for folding).
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
