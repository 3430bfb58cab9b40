"""Canonical op names and argument layouts, shared by every capture backend.

Backends hand over a *source* op name (an aten packet name such as ``"_softmax"``, a torch
function name, a Tensor method name) with its arguments, where other nodes' values are
already :class:`Ref`. :func:`normalize_op` returns the canonical name and arguments:

* aliases collapse (``_unsafe_view`` -> ``view``, ``truediv`` -> ``div``, ``contiguous`` ->
  ``identity``, ``split_with_sizes`` -> ``split`` ...);
* ops with a :data:`SIGNATURES` entry get aten's argument order, every default filled in, and
  keyword-only arguments (``alpha``, ``approximate``, attention's ``attn_mask``...) in
  ``kwargs``; arguments that do not change the value (``inplace``, ``cudnn_enable``,
  ``device``...) are dropped;
* a few values become concrete: view/reshape shapes (``-1`` resolved), slice bounds,
  single dims of reductions as lists, tuples as lists;
* dropout that cannot drop (eval mode or p == 0) becomes ``identity``.

Any other op keeps its arguments as given, under its own name, so the checker still sees it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from .capture_types import Ref, Shape


class _Required:
    def __repr__(self) -> str:
        return "<required>"


REQUIRED = _Required()


@dataclass(frozen=True)
class Signature:
    """A canonical layout: ``positional`` go to ``args`` in order, ``keyword`` to ``kwargs``.

    Each parameter is ``(name, default)``; ``aliases`` renames source keyword names, ``ignore``
    lists source arguments that do not change the op's value.
    """

    positional: tuple[tuple[str, Any], ...]
    keyword: tuple[tuple[str, Any], ...] = ()
    aliases: Mapping[str, str] = field(default_factory=dict)
    ignore: frozenset[str] = frozenset()

    @property
    def order(self) -> list[str]:
        return [name for name, _ in self.positional + self.keyword]


def _sig(*params: str | tuple[str, Any], keyword: Mapping[str, Any] | None = None,
         aliases: Mapping[str, str] | None = None, ignore: Sequence[str] = ()) -> Signature:
    positional = tuple((p, REQUIRED) if isinstance(p, str) else p for p in params)
    return Signature(positional, tuple((keyword or {}).items()), dict(aliases or {}), frozenset(ignore))


_UNARY = _sig("input", ignore=("inplace",))
_BINARY = _sig("input", "other")
_ALPHA = _sig("input", "other", keyword={"alpha": 1})
_REDUCE = _sig("input", ("dim", None), ("keepdim", False), keyword={"dtype": None})
_FACTORY_IGNORE = ("layout", "device", "pin_memory", "requires_grad", "memory_format")

SIGNATURES: dict[str, Signature] = {
    # matrix products
    "linear": _sig("input", "weight", ("bias", None)),
    "addmm": _sig("input", "mat1", "mat2", keyword={"beta": 1, "alpha": 1}),
    "mm": _sig("input", "mat2"),
    "bmm": _sig("input", "mat2"),
    "matmul": _BINARY,
    "baddbmm": _sig("input", "batch1", "batch2", keyword={"beta": 1, "alpha": 1}),
    # layers
    "layer_norm": _sig("input", "normalized_shape", ("weight", None), ("bias", None), ("eps", 1e-5),
                       ignore=("cudnn_enable",)),
    "rms_norm": _sig("input", "normalized_shape", ("weight", None), ("eps", None)),
    "embedding": _sig("weight", "indices", aliases={"input": "indices"},
                      ignore=("padding_idx", "scale_grad_by_freq", "sparse")),
    "conv2d": _sig("input", "weight", ("bias", None), ("stride", 1), ("padding", 0), ("dilation", 1),
                   ("groups", 1)),
    "scaled_dot_product_attention": _sig(
        "query", "key", "value",
        keyword={"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None, "enable_gqa": False}),
    "softmax": _sig("input", "dim", keyword={"dtype": None}, ignore=("_stacklevel", "half_to_float")),
    "log_softmax": _sig("input", "dim", keyword={"dtype": None}, ignore=("_stacklevel", "half_to_float")),
    "dropout": _sig("input", ("p", 0.5), ("train", True), aliases={"training": "train"}, ignore=("inplace",)),
    # shape ops
    "view": _sig("input", "shape", aliases={"size": "shape", "other": "shape"}),
    "reshape": _sig("input", "shape", aliases={"other": "shape"}),
    "flatten": _sig("input", ("start_dim", 0), ("end_dim", -1)),
    "transpose": _sig("input", "dim0", "dim1"),
    "permute": _sig("input", "dims"),
    "t": _sig("input"),
    "unsqueeze": _sig("input", "dim"),
    "squeeze": _sig("input", ("dim", None)),
    "expand": _sig("input", "sizes", aliases={"size": "sizes"}, ignore=("implicit",)),
    "identity": _sig("input"),
    "split": _sig("input", "split_size_or_sizes", ("dim", 0),
                  aliases={"split_size": "split_size_or_sizes", "split_sizes": "split_size_or_sizes",
                           "split_size_or_sections": "split_size_or_sizes"}),
    "chunk": _sig("input", "chunks", ("dim", 0)),
    "unbind": _sig("input", ("dim", 0)),
    "getitem": _sig("input", "index"),
    "select": _sig("input", "dim", "index"),
    "slice": _sig("input", ("dim", 0), ("start", None), ("end", None), ("step", 1)),
    "cat": _sig("tensors", ("dim", 0)),
    "stack": _sig("tensors", ("dim", 0)),
    # elementwise
    "add": _ALPHA,
    "sub": _ALPHA,
    "mul": _BINARY,
    "div": _sig("input", "other", keyword={"rounding_mode": None}),
    "pow": _sig("input", "exponent"),
    "neg": _UNARY,
    "gelu": _sig("input", keyword={"approximate": "none"}),
    "tanh": _UNARY,
    "relu": _UNARY,
    "silu": _UNARY,
    "sigmoid": _UNARY,
    "exp": _UNARY,
    "sqrt": _UNARY,
    "rsqrt": _UNARY,
    # reductions and factories
    "mean": _REDUCE,
    "sum": _REDUCE,
    "arange": _sig(("start", 0), "end", ("step", 1), keyword={"dtype": None}, ignore=_FACTORY_IGNORE),
}

# Source names (aten packets, torch functions, Tensor methods, operator builtins) that mean a
# canonical op. Everything that only changes dtype, layout or memory, not values, is identity.
RENAMES: dict[str, str] = {
    "_softmax": "softmax", "_log_softmax": "log_softmax", "split_with_sizes": "split",
    "unsafe_split": "split", "unsafe_split_with_sizes": "split", "unsafe_chunk": "chunk",
    "_unsafe_view": "view", "view_as": "view", "reshape_as": "reshape",
    "_assert_tensor_metadata": "assert",
    "truediv": "div", "true_divide": "div", "divide": "div", "multiply": "mul", "subtract": "sub",
    "negative": "neg", "floordiv": "floor_divide", "iadd": "add", "isub": "sub", "imul": "mul",
    "itruediv": "div", "mod": "remainder",
    # Python operators on tensors (fx: operator.and_; aten: __and__) -> the aten function names
    "__and__": "bitwise_and", "and_": "bitwise_and", "__or__": "bitwise_or", "or_": "bitwise_or",
    "__xor__": "bitwise_xor", "xor": "bitwise_xor", "__invert__": "bitwise_not", "invert": "bitwise_not",
    "inv": "bitwise_not",
    "feature_dropout": "dropout", "alpha_dropout": "dropout", "feature_alpha_dropout": "dropout",
    "dropout1d": "dropout", "dropout2d": "dropout", "dropout3d": "dropout",
}
IDENTITY_SOURCES = frozenset({
    "identity", "contiguous", "clone", "alias", "to", "_to_copy", "detach", "lift_fresh_copy",
    "type_as", "float", "double", "half", "bfloat16", "type", "cpu", "cuda",
})


def canonical_name(source: str) -> str:
    """The canonical op for a source op name; in-place variants (``add_``) name their
    out-of-place twin, since the node's value is the same.

    >>> canonical_name("_unsafe_view"), canonical_name("contiguous"), canonical_name("relu_")
    ('view', 'identity', 'relu')
    """
    if source.endswith("_") and not source.startswith("_"):
        source = source[:-1]
    if source in IDENTITY_SOURCES:
        return "identity"
    return RENAMES.get(source, source)


def _listify(value: Any) -> Any:
    """Tuples become lists, recursively, so both backends spell sequences alike."""
    if isinstance(value, (list, tuple)):
        return [_listify(v) for v in value]
    return value


def bind(op: str, args: Sequence[Any], kwargs: Mapping[str, Any],
         arg_names: Sequence[str] | None = None) -> tuple[tuple, dict]:
    """Lay ``args``/``kwargs`` out as ``SIGNATURES[op]`` says, defaults filled in.

    ``arg_names`` are the source's own names for its positional arguments (from an aten
    schema or a Python signature); without them positionals are taken in canonical order.
    Arguments the signature does not know are kept: extra positionals at the end of ``args``,
    extra keywords in ``kwargs``.

    >>> bind("linear", (Ref("x"), Ref("w")), {})
    ((%x, %w, None), {})
    >>> bind("embedding", (), {"input": Ref("ids"), "weight": Ref("w")})
    ((%w, %ids), {})
    """
    sig = SIGNATURES[op]
    order = sig.order
    named: dict[str, Any] = {}
    extra_args: list[Any] = []
    extra_kwargs: dict[str, Any] = {}

    def put(name: str, value: Any) -> None:
        name = sig.aliases.get(name, {"self": "input", "tensor": "input"}.get(name, name))
        if name in sig.ignore:
            return
        if name in order:
            named[name] = value
        else:
            extra_kwargs[name] = value

    for i, value in enumerate(args):
        if arg_names is not None and i < len(arg_names):
            put(arg_names[i], value)
        elif arg_names is None and i < len(order):
            named[order[i]] = value
        else:
            extra_args.append(value)
    for name, value in kwargs.items():
        put(name, value)

    missing = [name for name, default in sig.positional + sig.keyword
               if default is REQUIRED and name not in named]
    if missing:
        raise ValueError(f"{op}: missing argument(s) {', '.join(missing)}")
    new_args = tuple(named.get(name, default) for name, default in sig.positional) + tuple(extra_args)
    new_kwargs = {name: named.get(name, default) for name, default in sig.keyword}
    new_kwargs.update(extra_kwargs)
    return new_args, new_kwargs


ShapeOf = Callable[[Ref], "Shape | None"]


def _pair(value: Any) -> Any:
    """Conv hyper-parameters as a 2-list (``padding`` may be the strings 'same'/'valid')."""
    if isinstance(value, int):
        return [value, value]
    return _listify(value)


def _slice_bounds(args: tuple, shape_of: ShapeOf) -> tuple:
    """Concrete slice bounds: start/end resolved against the dimension's size and clamped."""
    x, dim, start, end, step = args[:5]
    shape = shape_of(x) if isinstance(x, Ref) else None
    if not shape or not isinstance(dim, int) or not all(isinstance(v, (int, type(None))) for v in (start, end)):
        return args
    size = shape[dim]
    start = 0 if start is None else start
    end = size if end is None else end
    start = min(max(start + size if start < 0 else start, 0), size)
    end = min(max(end + size if end < 0 else end, 0), size)
    return (x, dim, start, end, step) + tuple(args[5:])


def _transpose_attribute(op: str, args: tuple, shape_of: ShapeOf) -> tuple[str, tuple, dict] | None:
    """``x.T`` (aten ``numpy_T``) and ``x.mT`` as t/permute/transpose, which have rules."""
    x = args[0] if args else None
    if op == "mT":
        return "transpose", (x, -2, -1), {}
    shape = shape_of(x) if isinstance(x, Ref) else None
    if op == "numpy_T" and shape is not None:
        return ("t", (x,), {}) if len(shape) <= 2 else ("permute", (x, list(range(len(shape)))[::-1]), {})
    return None


def _fix_up(op: str, args: tuple, kwargs: dict, out_shape: Any, shape_of: ShapeOf) -> tuple[str, tuple, dict]:
    """Per-op canonical values that need shapes or special cases."""
    if op == "embedding" and kwargs.get("max_norm", None) is None:
        # F.embedding passes max_norm=None, norm_type=2.0 through; without max_norm they do nothing
        kwargs = {k: v for k, v in kwargs.items() if k not in ("max_norm", "norm_type")}
    if op == "identity":
        return op, args[:1], {}
    if op == "dropout" and (args[2] is False or args[1] == 0):
        return "identity", args[:1], {}
    if op in ("view", "reshape") and isinstance(out_shape, tuple) and all(isinstance(d, int) for d in out_shape):
        return op, (args[0], list(out_shape)), kwargs
    if op in ("permute", "expand", "layer_norm", "rms_norm"):
        # permute/expand take a size list; norms take normalized_shape: spell both as lists
        return op, (args[0], _listify(args[1])) + args[2:], kwargs
    if op in ("mean", "sum") and isinstance(args[1], int):
        return op, (args[0], [args[1]]) + args[2:], kwargs
    if op == "conv2d":
        x, w, b, stride, padding, dilation, groups = args[:7]
        return op, (x, w, b, _pair(stride), _pair(padding), _pair(dilation), groups) + args[7:], kwargs
    if op == "slice":
        return op, _slice_bounds(args, shape_of), kwargs
    return op, args, kwargs


def normalize_op(source: str, args: Sequence[Any], kwargs: Mapping[str, Any] | None = None, *,
                 arg_names: Sequence[str] | None = None, out_shape: Any = None,
                 shape_of: ShapeOf | None = None) -> tuple[str, tuple, dict]:
    """Canonical ``(op, args, kwargs)`` for a call of ``source``.

    ``out_shape`` (the node's static output shape) resolves view/reshape shapes;
    ``shape_of(ref)`` gives an input's shape, used for slice bounds.

    >>> normalize_op("_unsafe_view", (Ref("x"), [-1, 4]), out_shape=(2, 4))
    ('view', (%x, [2, 4]), {})
    >>> normalize_op("add", (Ref("a"), Ref("b")))
    ('add', (%a, %b), {'alpha': 1})
    >>> normalize_op("dropout", (Ref("x"), 0.1, False))
    ('identity', (%x,), {})
    """
    kwargs = dict(kwargs or {})
    op = canonical_name(source)
    if source == "arange" and arg_names is None and len(args) == 1:
        arg_names = ["end"]  # torch.arange(n) means arange(0, n)
    if op in ("numpy_T", "mT"):
        return _transpose_attribute(op, tuple(args), shape_of or (lambda ref: None)) or (op, tuple(args), kwargs)
    if op not in SIGNATURES:
        return op, tuple(args), kwargs
    new_args, new_kwargs = bind(op, args, kwargs, arg_names)
    new_args = tuple(_listify(a) for a in new_args)
    new_kwargs = {k: _listify(v) for k, v in new_kwargs.items()}
    return _fix_up(op, new_args, new_kwargs, out_shape, shape_of or (lambda ref: None))
