"""Inference rules: what each captured op says about the axis variables of its operands.

A rule reads its operands' values (tuples of axis variables, one per tensor axis) through a
:class:`Ctx`, unites variables the op forces to be one space, records facts (flags, roles,
norms, which parameter axes are read or written), and returns the output's value. Ops without
a rule are *opaque*: every variable they touch is flagged ``fixed`` (fail closed, never a
symmetry that was not established).
"""
from __future__ import annotations

from typing import Callable

from ..graph.capture_types import Ref
from .reshape import ReshapeError, Stacked, parts_axes, regroup

RULES: dict[str, Callable] = {}

NONLINEAR = ("gelu", "tanh", "relu", "silu", "sigmoid", "exp", "log", "sqrt", "rsqrt", "pow", "abs", "erf",
             "square", "reciprocal", "sin", "cos", "elu", "leaky_relu", "softplus", "hardtanh", "mish", "sign",
             "log_sigmoid", "hardswish", "hardsigmoid", "relu6", "clamp", "clamp_min", "clamp_max", "where",
             "masked_fill", "maximum", "minimum", "dropout", "native_dropout")
# where/masked_fill/maximum/minimum have no static-check rule yet: the walk treats them as opaque
# until one exists (see walk.py), then this rule applies
PASS = ("identity", "contiguous", "clone", "alias", "to", "detach", "lift_fresh_copy", "type_as", "neg", "positive")


def rule(*ops: str):
    def wrap(fn):
        for op in ops:
            RULES[op] = fn
        return fn
    return wrap


class Opaque(Exception):
    """Raised by a rule that meets a case it cannot interpret; the walker goes conservative."""


class Ctx:
    """What a rule sees: the node, the walk state (variables, values, records)."""

    def __init__(self, walk, node):
        self.walk, self.node, self.vars = walk, node, walk.vars

    @property
    def where(self) -> str:
        return f"{self.node.op} in {self.node.module}" if self.node.module else f"{self.node.op} ({self.node.name})"

    def value(self, arg):
        return self.walk.values.get(arg.name) if isinstance(arg, Ref) else None

    def arg(self, index: int, default=None):
        args = self.node.args
        return args[index] if index < len(args) else default

    def tensor(self, index: int):
        """The tuple of variables of tensor argument ``index`` (Opaque if it is not a plain tensor)."""
        value = self.value(self.arg(index))
        if not isinstance(value, tuple):
            raise Opaque(f"argument {index} is not a plain tensor")
        return value

    def param(self, index: int) -> str | None:
        """The param node name of argument ``index``, if it is a (persistent) parameter."""
        arg = self.arg(index)
        return arg.name if isinstance(arg, Ref) and arg.name in self.walk.param_axes else None

    def union(self, a: int, b: int, flip: bool = False) -> None:
        self.vars.union(a, b, flip, why=self.where)

    def flag(self, var: int, flag: str, why: str | None = None) -> None:
        self.vars.flag(var, flag, why or self.where)

    def use(self, index: int, axis: int, role: str) -> None:
        """Record that parameter argument ``index``'s axis ``axis`` is read or written here."""
        name = self.param(index)
        if name is not None:
            self.walk.uses.append((self.node.name, name, axis, role, self.node.module))

    def fresh(self, shape, reason: str | None = None):
        """New variables for an output of ``shape`` (flagged fixed with ``reason``)."""
        if shape is None:
            return None
        if shape and isinstance(shape[0], tuple):
            return [self.fresh(s, reason) for s in shape]
        return tuple(self.vars.new(int(s), "fixed" if reason else None, reason or "") for s in shape)


def broadcast(ctx: Ctx, tensors: list[tuple], *, product: bool = False, shift: bool = False) -> tuple:
    """Unite right-aligned axes of an elementwise op's tensor operands; the output's axes.

    ``product``: an axis where two operands both vary is an elementwise product of spaces
    (only permutations commute with it). ``shift``: an axis along which some operand is
    constant (missing or size 1) gets a constant vector added (add/sub).
    """
    n = max(len(t) for t in tensors)
    out = []
    for i in range(1, n + 1):
        present = [t[-i] for t in tensors if i <= len(t)]
        full = [v for v in present if ctx.vars.size(v) != 1]
        if not full:
            out.append(present[0])
            continue
        for other in full[1:]:
            ctx.union(full[0], other)
        if product and len(full) > 1:
            ctx.flag(full[0], "nonlinear", f"elementwise product ({ctx.where})")
        if shift and len(full) < len(tensors):
            ctx.flag(full[0], "shift", f"a constant is added along this axis ({ctx.where})")
        out.append(full[0])
    return tuple(reversed(out))


def _numbers(ctx: Ctx) -> list:
    return [a for a in ctx.node.args[:2] if isinstance(a, (int, float)) and not isinstance(a, bool)]


# -- elementwise -----------------------------------------------------------------------
@rule(*PASS)
def pass_rule(ctx):
    return ctx.value(ctx.arg(0))


@rule("assert", "_assert_tensor_metadata")
def assert_rule(ctx):
    return None


@rule("add", "sub", "rsub")
def add_rule(ctx):
    # x + y: axes where both vary are one space; a number or an operand constant along an axis
    # (missing or size 1 there) adds c·1 to that axis
    tensors = [ctx.value(a) for a in ctx.node.args[:2] if isinstance(a, Ref)]
    if not all(isinstance(t, tuple) for t in tensors) or not tensors:
        raise Opaque("operand is not a plain tensor")
    out = broadcast(ctx, tensors, shift=True)
    if any(n != 0 for n in _numbers(ctx)) or any(len(t) == 0 for t in tensors):
        for var in out:
            ctx.flag(var, "shift", f"a constant is added ({ctx.where})")
    return out


@rule("mul", "div")
def mul_rule(ctx):
    # x * y: scaling by a number or by a factor constant along an axis commutes with any linear
    # map of that axis; an elementwise product of two varying operands only with permutations
    tensors = [ctx.value(a) for a in ctx.node.args[:2] if isinstance(a, Ref)]
    if not all(isinstance(t, tuple) for t in tensors) or not tensors:
        raise Opaque("operand is not a plain tensor")
    return broadcast(ctx, tensors, product=True)


@rule(*NONLINEAR)
def nonlinear_rule(ctx):
    if ctx.node.op in ("dropout", "native_dropout") and not (len(ctx.node.args) > 2 and ctx.node.args[2]):
        return ctx.value(ctx.arg(0))
    tensors = [v for v in (ctx.value(r) for r in ctx.node.refs()) if v is not None]
    if not tensors or not all(isinstance(t, tuple) for t in tensors):
        raise Opaque("operand is not a plain tensor")
    out = broadcast(ctx, tensors)
    for var in out:
        ctx.flag(var, "nonlinear")
    return out


@rule("softmax", "log_softmax")
def softmax_rule(ctx):
    x = ctx.tensor(0)
    for var in x:
        ctx.flag(var, "nonlinear")
    return x


@rule("mean", "sum")
def reduce_rule(ctx):
    # summing over an axis reads it with the ones vector: only maps that fix 1 keep the sum
    x = ctx.tensor(0)
    dims = ctx.arg(1)
    keep = bool(ctx.arg(2, False))
    dims = list(range(len(x))) if dims is None else [d % len(x) for d in (dims if isinstance(dims, (list, tuple)) else [dims])]
    for d in dims:
        ctx.flag(x[d], "shift", f"summed over ({ctx.where})")
    return tuple(ctx.vars.new(1) if i in dims else v for i, v in enumerate(x) if keep or i not in dims)


# -- contractions ------------------------------------------------------------------------
@rule("linear")
def linear_rule(ctx):
    # x (..., in) · w (out, in)^T + b (out,): w's input axis reads x's features (their dual),
    # its output axis and the bias write the output's features
    x, w = ctx.tensor(0), ctx.tensor(1)
    ctx.union(x[-1], w[1], flip=True)
    ctx.vars.vote(w[0])
    ctx.use(1, 1, "read")
    ctx.use(1, 0, "write")
    if isinstance(ctx.arg(2), Ref):
        b = ctx.tensor(2)
        ctx.union(b[-1], w[0])
        ctx.vars.vote(b[-1])
        ctx.use(2, 0, "write")
    return x[:-1] + (w[0],)


@rule("addmm")
def addmm_rule(ctx):
    # bias (out,) + m1 (n, in) @ m2 (in, out): GPT-2's Conv1D, whose weight is stored (in, out)
    bias, m1, m2 = ctx.tensor(0), ctx.tensor(1), ctx.tensor(2)
    ctx.union(m1[1], m2[0], flip=True)
    if ctx.vars.size(bias[-1]) == ctx.vars.size(m2[1]):
        ctx.union(bias[-1], m2[1])
    ctx.vars.vote(m2[1])
    ctx.use(2, 0, "read")
    ctx.use(2, 1, "write")
    ctx.use(0, len(bias) - 1, "write")
    return (m1[0], m2[1])


@rule("mm", "matmul", "bmm")
def matmul_rule(ctx):
    # a (*batch, n, m) @ b (*batch, m, p) -> (*batch, n, p); 1-d operands contract their only axis
    a, b = ctx.tensor(0), ctx.tensor(1)
    if len(a) == 1 or len(b) == 1:
        ctx.union(a[-1], b[0] if len(b) == 1 else b[-2], flip=True)
        return a[:-1] if len(b) == 1 else b[:-2] + b[-1:]
    ctx.union(a[-1], b[-2], flip=True)
    ctx.use(1, len(b) - 2, "read")
    ctx.use(1, len(b) - 1, "write")
    batch = broadcast(ctx, [a[:-2], b[:-2]]) if len(a) > 2 or len(b) > 2 else ()
    if ctx.param(0) is None and ctx.param(1) is None:
        # two activations meet: attention written with matmuls (q @ k^T, then probs @ v)
        if _from_softmax(ctx.walk.graph, ctx.arg(0)):
            ctx.flag(b[-1], "ov", ctx.where)
        else:
            ctx.flag(a[-1], "qk", ctx.where)
            ctx.vars.vote(a[-1], strong=True)
        for var in batch:
            ctx.flag(var, "heads", ctx.where)
    return batch + (a[-2], b[-1])


def _from_softmax(graph, arg, depth: int = 0) -> bool:
    if not isinstance(arg, Ref) or depth > 6:
        return False
    node = graph.node(arg.name)
    if node.op in ("softmax", "log_softmax"):
        return True
    return node.op in PASS + ("dropout", "view", "reshape") and bool(node.args) and \
        _from_softmax(graph, node.args[0], depth + 1)


@rule("conv1d", "conv2d", "conv3d", "convolution")
def conv_rule(ctx):
    # x (b, c_in, *spatial) * w (c_out, c_in, *kernel) + b (c_out,): channels contract like a
    # linear layer; kernel taps and spatial positions mix, so they stay fixed
    x, w = ctx.tensor(0), ctx.tensor(1)
    groups = ctx.arg(6, 1)
    if groups not in (None, 1):
        raise Opaque("grouped convolution")
    for var in x[2:] + w[2:]:
        ctx.flag(var, "fixed", f"spatial axis of a convolution ({ctx.where})")
    ctx.union(x[1], w[1], flip=True)
    ctx.vars.vote(w[0])
    ctx.use(1, 1, "read")
    ctx.use(1, 0, "write")
    if isinstance(ctx.arg(2), Ref):
        b = ctx.tensor(2)
        ctx.union(b[0], w[0])
        ctx.use(2, 0, "write")
    spatial = ctx.fresh(ctx.node.shape[2:], f"spatial axis of a convolution ({ctx.where})")
    return (x[0], w[0]) + spatial


@rule("embedding")
def embedding_rule(ctx):
    # w (vocab, d)[idx (...)] -> (..., d): rows are picked by integer ids, so they cannot move
    w, idx = ctx.tensor(0), ctx.tensor(1)
    ctx.flag(w[0], "fixed", f"embedding rows, indexed by integer ids ({ctx.where})")
    ctx.vars.vote(w[1])
    ctx.use(0, 1, "write")
    return idx + (w[1],)


@rule("scaled_dot_product_attention")
def sdpa_rule(ctx):
    # q (b, h, t_q, k), k (b, h, t_k, k), v (b, h, t_k, k_v) -> (b, h, t_q, k_v): scores contract
    # q and k per head, softmax mixes tokens, values are averaged per head
    q, k, v = ctx.tensor(0), ctx.tensor(1), ctx.tensor(2)
    if ctx.node.kwargs.get("enable_gqa") or not len(q) == len(k) == len(v) >= 2:
        raise Opaque("grouped-query attention")
    ctx.union(q[-1], k[-1], flip=True)          # scores q·k: keys live on the dual of the queries
    ctx.vars.vote(q[-1], strong=True)
    ctx.flag(q[-1], "qk")
    ctx.flag(v[-1], "ov")
    for t in (q, k, v):
        ctx.flag(t[-2], "fixed", f"token axis of attention ({ctx.where})")
    ctx.union(k[-2], v[-2])
    for i in range(len(q) - 2):
        sizes = {ctx.vars.size(t[i]) for t in (q, k, v)}
        if len(sizes) != 1:
            raise Opaque("attention heads broadcast (grouped-query or multi-query attention)")
        ctx.union(q[i], k[i])
        ctx.union(q[i], v[i])
        ctx.flag(q[i], "heads")
        ctx.flag(q[i], "nonlinear", f"head axis of attention ({ctx.where})")
    mask = ctx.node.kwargs.get("attn_mask")
    if isinstance(mask, Ref):
        m = ctx.value(mask)
        if not isinstance(m, tuple):
            raise Opaque("attention mask is not a plain tensor")
        scores = q[:-1] + (k[-2],)
        for i in range(1, min(len(m), len(scores)) + 1):
            if ctx.vars.size(m[-i]) != 1:
                ctx.union(m[-i], scores[-i])
    return q[:-1] + (v[-1],)


# -- norms ---------------------------------------------------------------------------------
@rule("layer_norm", "rms_norm")
def norm_rule(ctx):
    # x (..., d) normalised over d; gain w (d,) and bias b (d,) live on the same space as x's d
    x = ctx.tensor(0)
    shape = ctx.arg(1)
    n = len(shape) if isinstance(shape, (list, tuple)) else 1
    if n != 1:
        raise Opaque("a norm over several axes")
    var = x[-1]
    kind = "ln" if ctx.node.op == "layer_norm" else "rms"
    weight_index, bias_index = 2, (3 if kind == "ln" else None)
    params = {}
    for label, index in (("weight", weight_index), ("bias", bias_index)):
        if index is not None and isinstance(ctx.arg(index), Ref):
            t = ctx.tensor(index)
            ctx.union(t[-1], var)
            params[label] = ctx.param(index) or "?"
    ctx.flag(var, kind, ctx.where)
    ctx.walk.norms.append((ctx.node.name, kind, var, params.get("weight"), params.get("bias")))
    return x


# -- shape ops -------------------------------------------------------------------------
@rule("view", "reshape", "_unsafe_view", "flatten")
def reshape_rule(ctx):
    x = ctx.value(ctx.arg(0))
    if not isinstance(x, tuple):
        raise Opaque("reshape of a fused tensor")
    shape = ctx.node.shape
    try:
        return regroup(ctx.vars, x, list(shape), parts_axes(ctx.walk.graph, ctx.node))
    except ReshapeError as exc:
        raise Opaque(str(exc)) from None


def _reorder(value, order):
    if isinstance(value, Stacked):
        return Stacked(order.index(value.axis), [tuple(m[i] for i in order) for m in value.members])
    return tuple(value[i] for i in order)


def _ndim(value):
    return len(value.members[0]) if isinstance(value, Stacked) else len(value)


@rule("transpose")
def transpose_rule(ctx):
    x = ctx.value(ctx.arg(0))
    n = _ndim(x)
    order = list(range(n))
    d0, d1 = ctx.arg(1) % n, ctx.arg(2) % n
    order[d0], order[d1] = order[d1], order[d0]
    return _reorder(x, order)


@rule("permute")
def permute_rule(ctx):
    x = ctx.value(ctx.arg(0))
    n = _ndim(x)
    return _reorder(x, [d % n for d in ctx.arg(1)])


@rule("t")
def t_rule(ctx):
    return tuple(reversed(ctx.tensor(0)))


@rule("unsqueeze")
def unsqueeze_rule(ctx):
    x = ctx.tensor(0)
    dim = ctx.arg(1) % (len(x) + 1)
    return x[:dim] + (ctx.vars.new(1),) + x[dim:]


@rule("squeeze")
def squeeze_rule(ctx):
    x = ctx.tensor(0)
    dims = ctx.arg(1)
    if dims is None:
        dims = list(range(len(x)))
    dims = {d % len(x) for d in (dims if isinstance(dims, (list, tuple)) else [dims])}
    return tuple(v for i, v in enumerate(x) if not (i in dims and ctx.vars.size(v) == 1))


@rule("expand")
def expand_rule(ctx):
    x = ctx.tensor(0)
    shape = list(ctx.node.shape)
    lead = len(shape) - len(x)
    out = [ctx.vars.new(s, "shift", f"broadcast by expand ({ctx.where})") for s in shape[:lead]]
    for var, size in zip(x, shape[lead:]):
        out.append(var if ctx.vars.size(var) == size else
                   ctx.vars.new(size, "shift", f"broadcast by expand ({ctx.where})"))
    return tuple(out)


def _sizes(total: int, spec) -> list[int]:
    if isinstance(spec, int):
        return [spec] * (total // spec) + ([total % spec] if total % spec else [])
    return [int(s) for s in spec]


def _split(ctx, x, dim, sizes):
    if len(sizes) == 1:
        return [x]
    parts = ctx.vars.expand(x[dim], "sum", sizes)
    if parts is None:
        raise Opaque("split of an axis that is already split differently")
    return [x[:dim] + (p,) + x[dim + 1:] for p in parts]


@rule("split")
def split_rule(ctx):
    x = ctx.tensor(0)
    dim = ctx.arg(2, 0) % len(x)
    return _split(ctx, x, dim, _sizes(ctx.vars.size(x[dim]), ctx.arg(1)))


@rule("chunk")
def chunk_rule(ctx):
    x = ctx.tensor(0)
    dim = ctx.arg(2, 0) % len(x)
    total = ctx.vars.size(x[dim])
    return _split(ctx, x, dim, _sizes(total, -(-total // ctx.arg(1))))


@rule("unbind")
def unbind_rule(ctx):
    x = ctx.value(ctx.arg(0))
    dim = ctx.arg(1, 0)
    if isinstance(x, Stacked):
        dim %= _ndim(x)
        if dim != x.axis:
            raise Opaque("unbind of a fused tensor along another axis")
        return [m[:dim] + m[dim + 1:] for m in x.members]
    if not isinstance(x, tuple):
        raise Opaque("unbind of a non-tensor")
    dim %= len(x)
    ctx.flag(x[dim], "fixed", f"unbind picks entries of this axis ({ctx.where})")
    return [x[:dim] + x[dim + 1:] for _ in range(ctx.vars.size(x[dim]))]


@rule("getitem")
def getitem_rule(ctx):
    container, index = ctx.value(ctx.arg(0)), ctx.arg(1)
    if isinstance(container, list) and isinstance(index, int):
        return container[index]
    raise Opaque("tensor indexing")


@rule("select")
def select_rule(ctx):
    x, dim, index = ctx.value(ctx.arg(0)), ctx.arg(1), ctx.arg(2)
    if isinstance(x, Stacked):
        dim %= _ndim(x)
        if dim != x.axis or not isinstance(index, int):
            raise Opaque("select on a fused tensor along another axis")
        member = x.members[index]
        return member[:dim] + member[dim + 1:]
    if not isinstance(x, tuple):
        raise Opaque("select of a non-tensor")
    dim %= len(x)
    ctx.flag(x[dim], "fixed", f"select picks one entry of this axis ({ctx.where})")
    return x[:dim] + x[dim + 1:]


@rule("slice")
def slice_rule(ctx):
    x = ctx.tensor(0)
    dim = ctx.arg(1, 0) % len(x)
    size = ctx.node.shape[dim]
    if size == ctx.vars.size(x[dim]):
        return x
    ctx.flag(x[dim], "fixed", f"slice takes part of this axis ({ctx.where})")
    return x[:dim] + (ctx.vars.new(size, "fixed", f"slice takes part of this axis ({ctx.where})"),) + x[dim + 1:]


@rule("cat", "concat", "concatenate")
def cat_rule(ctx):
    tensors = [ctx.value(t) for t in ctx.arg(0) if isinstance(t, Ref)]
    if not tensors or not all(isinstance(t, tuple) for t in tensors) or len({len(t) for t in tensors}) != 1:
        raise Opaque("cat of non-tensors")
    dim = ctx.arg(1, 0) % len(tensors[0])
    for i in range(len(tensors[0])):
        if i != dim:
            for other in tensors[1:]:
                ctx.union(tensors[0][i], other[i])
    pieces = [t[dim] for t in tensors if ctx.vars.size(t[dim]) > 0]
    joined = pieces[0] if len(pieces) == 1 else ctx.vars.new_sum(pieces)
    return tensors[0][:dim] + (joined,) + tensors[0][dim + 1:]


@rule("stack")
def stack_rule(ctx):
    tensors = [ctx.value(t) for t in ctx.arg(0) if isinstance(t, Ref)]
    if not tensors or not all(isinstance(t, tuple) for t in tensors):
        raise Opaque("stack of non-tensors")
    for other in tensors[1:]:
        for a, b in zip(tensors[0], other):
            ctx.union(a, b)
    dim = ctx.arg(1, 0) % (len(tensors[0]) + 1)
    new = ctx.vars.new(len(tensors), "fixed", f"stack index ({ctx.where})")
    return tensors[0][:dim] + (new,) + tensors[0][dim:]
