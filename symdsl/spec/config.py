"""What a spec's expressions may read: the model's configuration, its tensors and modules.

Dims (``dims: {d: n_embd}``), template ranges (``repeat: {i: n_layer}``) and site sizes are
expressions over the model's configuration values and the dims above them, with the functions
``shape``, ``attr`` and ``len`` reading the model itself.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch

from ..errors import suggest
from .context import ResolveContext
from .expr import ExprError, evaluate, names_used
from .limits import MAX_REPEAT, MAX_REPEAT_PRODUCT


def model_config(model: torch.nn.Module) -> dict[str, Any]:
    """The configuration values a spec's expressions may read: a transformers config as a dict,
    else the ``symdsl_config`` a model records (the keyword arguments it was built with), else {}.

    >>> net = torch.nn.Linear(3, 4)
    >>> model_config(net)
    {}
    >>> net.symdsl_config = {"in_features": 3, "out_features": 4}
    >>> model_config(net)
    {'in_features': 3, 'out_features': 4}
    """
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        return config.to_dict()
    return dict(getattr(model, "symdsl_config", {}) or {})


def expression_functions(model: torch.nn.Module | None, state: Mapping[str, torch.Tensor],
                         prefixes: list[str]) -> dict[str, Callable]:
    """The functions a dim expression may call: ``shape(name, axis)`` (of a tensor of the state
    dict, or of a buffer the state dict leaves out), ``attr('module.path.attribute')`` (with an index,
    ``attr('patch_embed.img_size', 0)``, an entry of a tuple attribute) and ``len('module.path')``. Names are looked up under each of the spec's ``prefixes`` in turn.

    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU())
    >>> functions = expression_functions(net, net.state_dict(), [""])
    >>> functions["shape"]("0.weight", 1), functions["attr"]("0.out_features"), functions["len"]("")
    (3, 4, 2)
    >>> net[0].grid = (5, 7)
    >>> functions["attr"]("0.grid", 1)
    7
    >>> functions["shape"]("1.weight", 0)
    Traceback (most recent call last):
    ...
    symdsl.spec.expr.ExprError: no tensor '1.weight' in the model; did you mean '0.weight'?
    """
    def find(name: str) -> str:
        if not isinstance(name, str):
            raise ExprError(f"expected a tensor name in quotes, got {name!r}")
        for prefix in prefixes or [""]:
            if prefix + name in state:
                return prefix + name
        raise ExprError(f"no tensor '{name}' in the model{suggest(name, state)}")

    def module(path: str):
        if not isinstance(path, str):
            raise ExprError(f"expected a module path in quotes, got {path!r}")
        if model is None:
            raise ExprError("needs the model itself, not only a state dict")
        for prefix in prefixes or [""]:
            try:
                return model.get_submodule((prefix + path).rstrip("."))
            except AttributeError:
                continue
        names = [n for n, _ in model.named_modules() if n]
        raise ExprError(f"no module '{path}' in the model{suggest(path, names)}")

    def buffer(name: str):
        # a buffer the state dict leaves out (non-persistent: RoPE's inv_freq, r/2 frequencies)
        if model is not None and isinstance(name, str):
            buffers = dict(model.named_buffers())
            for prefix in prefixes or [""]:
                if prefix + name in buffers:
                    return buffers[prefix + name]
        return None

    def shape(name: str, axis: int) -> int:
        tensor = buffer(name) if isinstance(name, str) and not any(p + name in state for p in prefixes or [""]) else None
        tensor = tensor if tensor is not None else state[find(name)]
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise ExprError(f"shape('{name}', axis): the axis must be an integer, got {axis!r}")
        if not -tensor.dim() <= axis < tensor.dim():
            raise ExprError(f"shape('{name}', {axis}): the tensor has {tensor.dim()} axes (shape {tuple(tensor.shape)})")
        return int(tensor.shape[axis])

    def attr(path: str, index: int | None = None):
        if not isinstance(path, str):
            raise ExprError(f"expected 'module.path.attribute' in quotes, got {path!r}")
        owner, _, attribute = path.rpartition(".")
        if attribute.startswith("__"):
            raise ExprError(f"attr('{path}'): special attributes such as '{attribute}' cannot be read")
        target = module(owner) if owner else model
        if target is None or not hasattr(target, attribute):
            raise ExprError(f"module '{owner}' has no attribute '{attribute}'"
                            f"{suggest(attribute, [a for a in vars(target) if not a.startswith('_')]) if target is not None else ''}")
        value = getattr(target, attribute)
        if callable(value):
            raise ExprError(f"attr('{path}') is a method or module, not a value")
        return _entry(path, value, index)

    def length(path: str) -> int:
        target = module(path)
        if not hasattr(target, "__len__"):
            raise ExprError(f"len('{path}'): module '{path}' ({type(target).__name__}) has no length; "
                            "len() counts the entries of a ModuleList or Sequential")
        return len(target)

    return {"shape": shape, "attr": attr, "len": length}


def _entry(path: str, value: Any, index: int | None) -> Any:
    """``value`` itself, or its entry ``index`` when it is a tuple or list (timm's ``img_size``, (H, W))."""
    if index is None:
        if isinstance(value, (tuple, list)):
            raise ExprError(f"attr('{path}') is {type(value).__name__} {tuple(value)!r}, not a number; "
                            f"pick an entry: attr('{path}', 0)")
        return value
    if isinstance(index, bool) or not isinstance(index, int):
        raise ExprError(f"attr('{path}', index): the index must be an integer, got {index!r}")
    if not isinstance(value, (tuple, list)):
        raise ExprError(f"attr('{path}', {index}): the attribute is {type(value).__name__} {value!r}, "
                        "not a tuple or list; leave out the index")
    if not -len(value) <= index < len(value):
        raise ExprError(f"attr('{path}', {index}): the attribute has {len(value)} entries ({tuple(value)!r})")
    return value[index]


def eval_expr(context: ResolveContext, expr, path):
    """The value of one expression, or None after reporting why it has none at ``path``."""
    try:
        return evaluate(expr, {**context.config, **context.dims}, context.functions)
    except ExprError as exc:
        context.problem(path, str(exc), "expressions read the model config and the dims above; "
                        "functions: shape, attr, len, min, max")
        return None


def resolve_dims(context: ResolveContext) -> None:
    """Evaluate the 'dims' and 'repeat' sections into ``context.dims`` and ``context.ranges``.

    A dim may read the dims above it, so they are evaluated in the order written; any problem
    stops the resolution here, since everything after reads these values.
    """
    document = context.document
    context.functions = expression_functions(context.model, context.state, list(document.prefix))
    failed: set[str] = set()    # dims with a reported problem: a dim that reads one is not reported again
    for name, expr in document.dims.items():
        if names_used(expr) & failed:
            failed.add(name)
            continue
        value = eval_expr(context, expr, ("dims", name))
        if value is None:
            failed.add(name)
        else:
            if value < 0:
                context.problem(("dims", name), f"dimension '{name}' = {expr!r} is {value}, a negative size")
                continue
            context.dims[name] = value
    for var, expr in document.repeat.items():
        if names_used(expr) & failed:
            continue
        value = eval_expr(context, expr, ("repeat", var))
        if value is not None:
            if value < 0:
                context.problem(("repeat", var), f"range {value} is negative")
            elif value > MAX_REPEAT:
                context.problem(("repeat", var), f"range {value} is more than the {MAX_REPEAT} a template may "
                                "repeat", "ranges count layers, experts or heads")
                continue
            context.ranges[var] = max(value, 0)
    if math.prod(context.ranges.values()) > MAX_REPEAT_PRODUCT:
        context.problem(("repeat",), f"the ranges multiply to {math.prod(context.ranges.values())}, more than the "
                        f"{MAX_REPEAT_PRODUCT} entries a template over all of them may expand to")
    context.fail_if_problems()


def config_mismatches(spec, config: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    r"""``(key, required, actual)`` for each ``matches.config`` value the model's config lacks.

    >>> from symdsl.spec import load_spec_text
    >>> spec = load_spec_text("symdsl: 1\nname: s\nmatches: {config: {do_layer_norm_before: true}}\n")
    >>> config_mismatches(spec, {"do_layer_norm_before": False})
    [('do_layer_norm_before', True, False)]
    """
    return [(key, want, config.get(key)) for key, want in spec.document.matches.config.items()
            if config.get(key) != want or type(config.get(key)) is not type(want)]
