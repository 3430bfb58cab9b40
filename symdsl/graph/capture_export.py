"""The ``export`` backend: ``torch.export.export(..., strict=False)``, ATen-level ops.

Parameters and buffers are the program's lifted placeholders; the graph signature names their
state-dict entries. Tied weights come out as one placeholder per name, only one of them used:
they are merged into a single ``param`` node that lists every alias.
"""
from __future__ import annotations

import contextlib
import io
import logging
import operator
import sys
from typing import Any, Iterator

import torch
import torch.fx

from .capture_common import (TensorAliases, module_path, owner_module, param_node_name, shape_and_dtype,
                             source_location, split_inputs)
from .capture_types import CapturedGraph, OpNode, Ref
from .normalize import normalize_op


def _describe_target(target: Any) -> tuple[str, list[str] | None, str]:
    """``(source op name, names of its positional arguments, printable target)``."""
    if isinstance(target, torch._ops.OpOverload):
        names = [a.name for a in target._schema.arguments if not a.kwarg_only]
        return target.overloadpacket.__name__, names, str(target)
    if target is operator.getitem:
        return "getitem", None, "operator.getitem"
    name = getattr(target, "__name__", None) or str(target)
    return name, None, f"{getattr(target, '__module__', '') or ''}.{name}".lstrip(".")


def _to_refs(value: Any, names: dict[str, str]) -> Any:
    """Replace fx nodes (nested in lists/tuples/dicts) by Refs to their captured names."""
    if isinstance(value, torch.fx.Node):
        return Ref(names[value.name])
    if isinstance(value, (list, tuple)):
        return type(value)(_to_refs(v, names) for v in value)
    if isinstance(value, dict):
        return {k: _to_refs(v, names) for k, v in value.items()}
    return value


def _user_outputs(ep: torch.export.ExportedProgram, output_node: torch.fx.Node) -> list[torch.fx.Node]:
    """The output node's entries that the model returns (not buffer mutations), tensors only."""
    from torch.export.graph_signature import OutputKind

    values = output_node.args[0]
    specs = ep.graph_signature.output_specs
    return [v for v, spec in zip(values, specs)
            if spec.kind == OutputKind.USER_OUTPUT and isinstance(v, torch.fx.Node)
            and isinstance(v.meta.get("val"), torch.Tensor)]


@contextlib.contextmanager
def _quiet_on_failure() -> Iterator[None]:
    """When export fails it prints the partial graph to stderr and logs symbolic-shape
    warnings; the capture error already names the failure, so stderr is held back and replayed
    only on success, and that logger is silenced meanwhile. (Not thread-safe: stderr is global.)"""
    logger = logging.getLogger("torch.fx.experimental.symbolic_shapes")
    level = logger.level
    logger.setLevel(logging.ERROR)
    held = io.StringIO()
    try:
        with contextlib.redirect_stderr(held):
            yield
        sys.stderr.write(held.getvalue())
    finally:
        logger.setLevel(level)


def capture_export(model: torch.nn.Module, inputs: Any) -> CapturedGraph:
    """Capture ``model`` on example ``inputs`` with ``torch.export`` (non-strict).

    >>> g = capture_export(torch.nn.Linear(4, 2), {"input": torch.randn(3, 4)})
    >>> [n.op for n in g.nodes]
    ['param', 'param', 'input', 'linear', 'output']
    """
    args, kwargs = split_inputs(inputs)
    with _quiet_on_failure():
        ep = torch.export.export(model, args=args, kwargs=kwargs, strict=False)
    signature = ep.graph_signature
    lifted = {**{k: ("param", v) for k, v in signature.inputs_to_parameters.items()},
              **{k: ("buffer", v) for k, v in signature.inputs_to_buffers.items()}}
    constants = dict(getattr(signature, "inputs_to_lifted_tensor_constants", {}))
    user_inputs = set(signature.user_inputs)
    aliases = TensorAliases.of(model)

    nodes: list[OpNode] = []
    shapes: dict[str, Any] = {}         # node name -> static shape, for slice bounds
    params: dict[str, list[str]] = {}
    names: dict[str, str] = {}          # fx node name -> captured node name (tied params merge)
    node_of_group: dict[Any, str] = {}  # alias group -> its param node
    outputs: list[str] = []

    def emit(node: OpNode) -> None:
        nodes.append(node)
        shapes[node.name] = node.shape

    for fx_node in ep.graph.nodes:
        meta = fx_node.meta
        shape, dtype = shape_and_dtype(meta.get("val"))
        if fx_node.op == "placeholder" and fx_node.name in lifted:
            kind, fqn = lifted[fx_node.name]
            group = aliases.group(fqn)
            key = group if group is not None else fqn
            if key in node_of_group:  # another name of a tensor we already have
                names[fx_node.name] = node_of_group[key]
                continue
            node_of_group[key] = names[fx_node.name] = fx_node.name
            params[fx_node.name] = aliases.names(fqn)
            emit(OpNode(fx_node.name, "param", (), {}, fqn, shape, dtype, module=owner_module(fqn)))
        elif fx_node.op == "placeholder":
            names[fx_node.name] = fx_node.name
            op = "input" if fx_node.name in user_inputs else "constant" if fx_node.name in constants else "placeholder"
            emit(OpNode(fx_node.name, op, (), {}, constants.get(fx_node.name, fx_node.name), shape, dtype))
        elif fx_node.op == "output":
            refs = tuple(Ref(names[v.name]) for v in _user_outputs(ep, fx_node))
            outputs = [r.name for r in refs]
            emit(OpNode(fx_node.name, "output", refs, {}, "output"))
        else:
            names[fx_node.name] = fx_node.name
            source, code = source_location(meta.get("stack_trace"))
            where = dict(source=source, code=code, module=module_path(meta))
            if fx_node.op == "get_attr":  # submodules of higher-order ops (cond, ...)
                emit(OpNode(fx_node.name, "get_attr", (), {}, str(fx_node.target), shape, dtype, **where))
                continue
            op_name, arg_names, target = _describe_target(fx_node.target)
            op, op_args, op_kwargs = normalize_op(
                op_name, _to_refs(fx_node.args, names), _to_refs(dict(fx_node.kwargs), names),
                arg_names=arg_names, out_shape=shape, shape_of=lambda ref: shapes.get(ref.name))
            emit(OpNode(fx_node.name, op, op_args, op_kwargs, target, shape, dtype, **where))

    # torch.export lifts every parameter and buffer; should one be missing, still list it
    # (shape from the model) so that both backends cover the whole state.
    missing = []
    for index, (group_names, kind) in enumerate(zip(aliases.groups, aliases.kinds)):
        if index not in node_of_group:
            fqn = group_names[0]
            tensor = model.get_parameter(fqn) if kind == "param" else model.get_buffer(fqn)
            name = param_node_name(fqn, kind)
            params[name] = list(group_names)
            missing.append(OpNode(name, "param", (), {}, fqn, *shape_and_dtype(tensor), module=owner_module(fqn)))
    nodes[:0] = missing
    return CapturedGraph("export", nodes, params, [n for n in signature.user_inputs if n in names], outputs)
