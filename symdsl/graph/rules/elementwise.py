"""Rules for elementwise ops and reductions.

- Linear elementwise ops (add, sub of equal types; scaling by a number) keep every site.
- Nonlinear elementwise functions commute only with permutations: any other bound factor
  reaching them (a rotation of the residual stream through GELU, say) is a violation.
- Adding a tensor no site touches to a site axis breaks the symmetry (unless it broadcasts).
"""
from __future__ import annotations

from ..types import atoms_of, axis_size, axis_typed, is_tensor_type, normalize, show_axis, untyped_axis
from . import PERMUTATION_LIKE, rule


def _sites(axes):
    return [a.site for axis in axes for a in atoms_of(axis) if a.site]


def require_permutation_like(ctx, value, what: str) -> None:
    for site in _sites(value):
        if ctx.kind(site) not in PERMUTATION_LIKE:
            ctx.fail(f"{ctx.describe(site)} reaches {what}, which commutes only with permutations", site)


def _broadcast(ctx, a, b, op):
    """Output type of an elementwise binary op on tensor types a and b (right-aligned broadcast)."""
    n = max(len(a), len(b))
    out = []
    for i in range(1, n + 1):
        x = a[-i] if i <= len(a) else None
        y = b[-i] if i <= len(b) else None
        if x is None or y is None:
            out.append(x if y is None else y)
            continue
        if normalize(x) == normalize(y):
            out.append(x)
        elif axis_size(x) == 1 and not axis_typed(x):
            out.append(y)
        elif axis_size(y) == 1 and not axis_typed(y):
            out.append(x)
        else:
            typed, plain = (x, y) if axis_typed(x) else (y, x)
            site = next(s for s in _sites([typed]))
            if axis_typed(plain):
                ctx.fail(f"{op} combines {show_axis(x)} with {show_axis(y)}: both sides must carry the same sites", site)
            ctx.fail(f"{op} combines {ctx.describe(site)} with a tensor that no site touches along that axis "
                     "(a fixed vector does not transform with the symmetry)", site)
    return tuple(reversed(out))


def _scalar_shift_ok(ctx, value, op):
    """Adding a constant c·1: fine for permutations and rotations that fix the ones vector."""
    for site in _sites(value):
        s = ctx.sites[site]
        if s.kind.name not in PERMUTATION_LIKE and s.options.get("preserve") != "ones":
            ctx.fail(f"{op} adds a constant to {ctx.describe(site)}; only permutations and rotations fixing the "
                     "ones vector keep a constant vector fixed", site)


@rule("add", "sub", "rsub")
def add_rule(ctx):
    a, b = ctx.tensor_arg(0), ctx.tensor_arg(1)
    if is_tensor_type(a) and is_tensor_type(b):
        if len(a) == 0 or len(b) == 0:      # 0-d tensor acts as a scalar
            tensor = b if len(a) == 0 else a
            _scalar_shift_ok(ctx, tensor, ctx.node.op)
            return tensor
        return _broadcast(ctx, a, b, ctx.node.op)
    tensor = a if is_tensor_type(a) else b
    _scalar_shift_ok(ctx, tensor, ctx.node.op)
    return tensor


@rule("mul", "div")
def mul_rule(ctx):
    a, b = ctx.tensor_arg(0), ctx.tensor_arg(1)
    if is_tensor_type(a) and is_tensor_type(b) and len(a) and len(b):
        typed = [t for t in (a, b) if any(axis_typed(x) for x in t)]
        if len(typed) == 2:
            require_permutation_like(ctx, a, f"an elementwise product ({ctx.node.op})")
        elif typed:
            # scaling by an untyped tensor is fine only along axes it broadcasts over
            return _broadcast(ctx, a, b, ctx.node.op)
        return _broadcast(ctx, a, b, ctx.node.op)
    return a if is_tensor_type(a) and len(a) else b          # times a number: linear


@rule("neg", "positive")
def neg_rule(ctx):
    return ctx.tensor_arg(0)


@rule("gelu", "tanh", "relu", "silu", "sigmoid", "exp", "log", "sqrt", "rsqrt", "pow", "abs", "erf",
      "square", "reciprocal", "sin", "cos", "elu", "leaky_relu", "softplus", "hardtanh", "mish", "sign",
      "log_sigmoid", "hardswish", "hardsigmoid", "relu6", "clamp", "clamp_min", "clamp_max")
def nonlinear_rule(ctx):
    x = ctx.tensor_arg(0)
    require_permutation_like(ctx, x, ctx.node.op)
    return x


@rule("dropout", "native_dropout", "feature_dropout", "alpha_dropout")
def dropout_rule(ctx):
    x = ctx.tensor_arg(0)
    train = ctx.arg(2) if len(ctx.node.args) > 2 else ctx.kwarg("train", False)
    if train:
        require_permutation_like(ctx, x, "dropout in training mode")
    return x


@rule("mean", "sum")
def reduce_rule(ctx):
    x = ctx.tensor_arg(0)
    dims = ctx.arg(1) if len(ctx.node.args) > 1 else ctx.kwarg("dim")
    keep = ctx.arg(2) if len(ctx.node.args) > 2 else ctx.kwarg("keepdim", False)
    if dims is None:
        dims = list(range(len(x)))
    dims = [d % len(x) for d in (dims if isinstance(dims, (list, tuple)) else [dims])]
    for d in dims:
        for site in _sites([x[d]]):
            s = ctx.sites[site]
            if s.kind.name not in PERMUTATION_LIKE and s.options.get("preserve") != "ones":
                ctx.fail(f"{ctx.node.op} over an axis carrying {ctx.describe(site)} is not invariant", site)
    out = [untyped_axis(1) if i in dims else a for i, a in enumerate(x) if keep or i not in dims]
    return tuple(out)
