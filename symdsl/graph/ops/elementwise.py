"""Rules for elementwise ops and reductions.

- ``add``/``sub``: operands meet axis by axis (one space); an axis along which an operand is
  constant (missing, size 1, or a number) gets a constant vector added: ``shift``.
- ``mul``/``div``: scaling by a number or by a factor constant along an axis is linear there;
  where both operands vary it is an elementwise product: ``nonlinear``; where one of them is a
  parameter (through casts and arithmetic with numbers: ``weight``, ``1 + weight``) it is a
  per-feature ``gain`` (a norm's gain, a layer scale); ``x * x`` squares; where one of them is
  constant on each coordinate pair of the last axis by construction (RoPE's cos/sin, see
  :mod:`.rope`) or a window of a buffer whose values are (timm's precomputed RoPE table), it
  scales each pair by one number: ``rotary`` on that axis.
- ``pow(x, 2)``, ``square``: ``square`` on every axis (a sum or mean of squares is a norm).
- GELU, tanh, ``pow`` with another exponent, ... (and dropout in training mode): ``nonlinear``
  on every axis.
- ``mean``/``sum``: the reduced axes are ``summed``.
"""
from __future__ import annotations

from .base import op_rule
from .rope import pair_constant, table_pair_layout

NONLINEAR = ("gelu", "tanh", "relu", "silu", "sigmoid", "exp", "log", "sqrt", "rsqrt", "abs", "erf",
             "reciprocal", "sin", "cos", "elu", "leaky_relu", "softplus", "hardtanh", "mish", "sign",
             "log_sigmoid", "hardswish", "hardsigmoid", "relu6", "clamp", "clamp_min", "clamp_max")


def broadcast(call, tensors: list[tuple], what: str, *, product: bool = False, shift: bool = False,
              elementwise: bool = True) -> tuple:
    """The output axes of an op on right-aligned, broadcast operands, e.g. (b, t, d) with (d,).

    Operands that vary along an axis (not size 1) are one space there (``call.combine``, or
    ``call.same`` when not ``elementwise``). ``product``: where two vary, it is an elementwise
    product (``nonlinear``); ``shift``: where some operand is constant, a constant is added.
    """
    n = max(len(t) for t in tensors)
    out = []
    for i in range(1, n + 1):
        present = [t[-i] for t in tensors if i <= len(t)]
        full = [axis for axis in present if not call.is_unit(axis)]
        if not full:
            out.append(present[0])
            continue
        for other in full[1:]:
            if elementwise:
                call.combine(full[0], other, what)
            else:
                call.same(full[0], other, what)
        if product and len(full) > 1:
            call.nonlinear(full[0], f"an elementwise product ({what})")
        if shift and len(full) < len(tensors):
            call.shift(full[0], what)
        out.append(full[0])
    return tuple(reversed(out))


def _numbers(call) -> list:
    return [a for a in call.node.args[:2] if isinstance(a, (int, float)) and not isinstance(a, bool)]


@op_rule("add", "sub", "rsub")
def add_rule(call):
    # x (..., d) + y (d,): axes where both vary are one space; a number, a 0-d tensor, or an
    # operand missing/size 1 along an axis adds c·1 to that axis
    tensors = [call.tensor(i) for i in (0, 1) if call.has_tensor(i)]
    if not tensors:
        raise ValueError("add of two numbers")
    out = broadcast(call, tensors, call.op, shift=True)
    if any(n != 0 for n in _numbers(call)) or any(len(t) == 0 for t in tensors):
        # 1 + weight: a gain stored as an offset from 1 (Gemma's RMSNorm); say so where it is bound
        offset = len(tensors) == 1 and any(call.param_source(i) is not None for i in (0, 1) if call.has_tensor(i))
        what = (f"{call.op} of a number and a parameter (a gain stored as an offset from 1, as in Gemma's "
                "(1 + weight) RMSNorm; a gain bound to a site moves with it only under permutations)") if offset else None
        for axis in out:
            if offset:
                call.offset(axis, what)
            else:
                call.shift(axis, what)
    return out


@op_rule("mul", "div")
def mul_rule(call):
    # x * y: by a number, or a factor constant along an axis, commutes with any linear map of
    # that axis; an elementwise product of two varying operands only with coordinate moves;
    # x * x squares; weight * x (or x / weight) scales x by a per-feature gain
    tensors = [call.tensor(i) for i in (0, 1) if call.has_tensor(i)]
    if not tensors:
        raise ValueError("product of two numbers")
    if call.op == "mul" and len(tensors) == 2 and call.node.args[0] == call.node.args[1]:
        return tuple(call.square(axis) for axis in tensors[0])
    gain = _gain_operand(call) if len(tensors) == 2 else None
    if gain is not None:
        return _scaled(call, call.tensor(1 - gain), call.tensor(gain), gain)
    for i in ((0, 1) if call.op == "mul" else (1,)) if len(tensors) == 2 else ():
        layout = pair_constant(call.graph, call.node.args[i]) or \
            table_pair_layout(call.graph, call.node.args[i], call.buffer_value)
        x, c = call.tensor(1 - i), call.tensor(i)
        if layout is not None and x and not call.is_unit(x[-1]) and not call.is_unit(c[-1]):
            # x * cos: a table constant on each coordinate pair of the last axis scales every
            # pair by one number (RoPE); the other axes broadcast as any product
            rest = broadcast(call, [x[:-1], c[:-1]], call.op, product=True) if len(x) > 1 or len(c) > 1 else ()
            call.rotary(x[-1], layout, f"{call.op} by a rotary cos/sin table (the rotary position embedding)",
                        table=c[-1])
            return rest + (x[-1],)
    return broadcast(call, tensors, call.op, product=True)


def _gain_operand(call) -> int | None:
    """The operand that is a parameter-derived gain scaling an activation (None: no such pair)."""
    sources = [call.param_source(i) for i in (0, 1)]
    candidates = (0, 1) if call.op == "mul" else (1,)      # x / gain; gain / x is not a scaling
    found = [i for i in candidates if sources[i] is not None and sources[1 - i] is None]
    return found[0] if found else None


def _scaled(call, x: tuple, g: tuple, index: int) -> tuple:
    # right-aligned broadcast of x with the gain g: where both vary, g scales x coordinatewise
    out = []
    for i in range(1, max(len(x), len(g)) + 1):
        xa, ga = x[-i] if i <= len(x) else None, g[-i] if i <= len(g) else None
        if ga is None or call.is_unit(ga):
            out.append(xa)
        elif xa is None or call.is_unit(xa):
            out.append(ga)
        else:
            out.append(call.gain(xa, ga, index, call.op))
    return tuple(reversed(out))


@op_rule("where")
def where_rule(call):
    # where(cond, a, b): coordinate by coordinate a or b. Where two operands vary along an axis it
    # acts like a product (only coordinate moves keep it); a nonzero number operand fills the
    # unselected entries with c·1 (attention masks: -inf), a constant shift of every axis
    tensors = [call.tensor(i) for i in (0, 1, 2) if call.has_tensor(i)]
    if not tensors:
        raise ValueError("where of three numbers")
    out = broadcast(call, tensors, call.op, product=True)
    numbers = [a for a in call.node.args[1:3] if isinstance(a, (int, float)) and not isinstance(a, bool)]
    if any(n != 0 for n in numbers):
        for axis in out:
            call.shift(axis, "where fills the entries it does not select with a number")
    return out


@op_rule("square")
def square_rule(call):
    # x ** 2 coordinate by coordinate: a sum or mean of it over an axis is a squared norm
    return tuple(call.square(axis) for axis in call.tensor(0))


@op_rule("pow")
def pow_rule(call):
    # x ** 2 squares (see square_rule); any other exponent, or a tensor exponent, is nonlinear
    if call.has_tensor(0) and not call.has_tensor(1) and call.arg(1, name="exponent") == 2:
        return square_rule(call)
    return nonlinear_rule(call)


@op_rule("neg", "positive")
def neg_rule(call):
    return call.tensor(0)


@op_rule(*NONLINEAR)
def nonlinear_rule(call):
    # f(x) coordinate by coordinate (tensor operands such as pow's exponent broadcast with x)
    out = broadcast(call, call.tensors(), call.op)
    for axis in out:
        call.nonlinear(axis)
    return out


@op_rule("dropout", "native_dropout", "feature_dropout", "alpha_dropout")
def dropout_rule(call):
    # dropout(x, p, train): the identity in eval mode; a random coordinatewise mask in training
    x = call.tensor(0)
    if call.arg(2, False, name="train"):
        for axis in x:
            call.nonlinear(axis, "dropout in training mode")
    return x


@op_rule("mean", "sum")
def reduce_rule(call):
    # x (..., d) summed over d: reads x with the ones vector, so only maps fixing 1 keep it
    x = call.tensor(0)
    dims = call.arg(1, name="dim")
    keep = call.arg(2, False, name="keepdim")
    dims = list(range(len(x))) if dims is None else \
        [d % len(x) for d in (dims if isinstance(dims, (list, tuple)) else [dims])]
    for d in dims:
        call.summed(x[d])
    return tuple(call.new_axis(1) if i in dims else axis for i, axis in enumerate(x) if keep or i not in dims)
