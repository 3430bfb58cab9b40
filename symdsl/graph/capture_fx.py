"""The ``fx`` backend: ``torch.fx`` symbolic tracing, then one real run for shapes.

fx graphs are Python-level: module calls, torch functions, Tensor methods, ``getattr``/
``getitem`` on shapes. To reach the same op list as the export backend this backend

* runs the traced module once on the example inputs (under ``no_grad``), recording every
  node's value; non-tensor values (``x.shape[0]``, ``x.size()``, ``torch._assert`` results,
  defaulted arguments) are folded into their users as constants and their nodes dropped;
* rewrites leaf module calls into functional ops with explicit ``param`` nodes
  (see :mod:`symdsl.graph.capture_fx_modules`);
* rewrites tensor indexing ``x[:, 0]`` into ``select``/``slice``/``unsqueeze`` steps;
* names parameter nodes like torch.export does (``p_blocks_0_norm1_weight``).

Forward arguments that the inputs do not give are traced as constants (their defaults).
"""
from __future__ import annotations

import inspect
import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
from torch.utils._pytree import tree_leaves

from .capture_common import (TensorAliases, UniqueNames, module_path, owner_module, param_node_name,
                             shape_and_dtype, source_location, split_inputs)
from .capture_fx_modules import module_call
from .capture_types import CapturedGraph, OpNode, Ref
from .normalize import SIGNATURES, canonical_name, normalize_op

# Tensor attributes that are ops: x.T is aten's numpy_T, x.mT its mT, x.data a plain alias.
_TENSOR_ATTRIBUTES = {"T": "numpy_T", "mT": "mT", "data": "identity"}
# Tensor methods whose sizes may come as varargs: x.view(2, -1) means x.view([2, -1]).
_SIZE_VARARGS = frozenset({"view", "reshape", "permute", "expand", "repeat", "tile"})
_SIMPLE = (type(None), bool, int, float, complex, str, torch.dtype, torch.device, torch.layout,
           torch.memory_format, type(Ellipsis))


def _is_constant(value: Any) -> bool:
    """Plain Python data that can be written into a consumer's args in place of a node."""
    if isinstance(value, _SIMPLE):
        return True
    if isinstance(value, slice):
        return all(_is_constant(v) for v in (value.start, value.stop, value.step))
    if isinstance(value, (list, tuple)):
        return all(_is_constant(v) for v in value)
    return False


@dataclass
class _Seen:
    """What one node produced on the example run: shape/dtype for tensors, value for constants."""

    shape: Any = None
    dtype: torch.dtype | None = None
    is_tensor: bool = False   # a tensor or a non-empty list/tuple of tensors
    multi: bool = False       # the list/tuple case (split, unbind, chunk...)
    is_constant: bool = False
    value: Any = None


class _Recorder(torch.fx.Interpreter):
    """Runs the traced module and keeps a small summary of each node's output."""

    def __init__(self, module: torch.fx.GraphModule) -> None:
        super().__init__(module)
        self.seen: dict[torch.fx.Node, _Seen] = {}

    def run_node(self, node: torch.fx.Node) -> Any:
        result = super().run_node(node)
        shape, dtype = shape_and_dtype(result)
        if shape is not None:
            self.seen[node] = _Seen(shape, dtype, is_tensor=True, multi=not isinstance(result, torch.Tensor))
        elif _is_constant(result):
            self.seen[node] = _Seen(is_constant=True, value=tuple(result) if isinstance(result, torch.Size) else result)
        else:
            self.seen[node] = _Seen()
        return result


def _trace(model: torch.nn.Module, inputs: Any) -> tuple[torch.fx.GraphModule, list[Any], list[bool]]:
    """Trace ``model``; returns the module and, per placeholder, its value and whether the
    inputs gave it (the others are defaults, traced as constants)."""
    args, kwargs = split_inputs(inputs)
    signature = inspect.signature(model.forward)
    bound = signature.bind_partial(*args, **kwargs)
    fixed = [p for p in signature.parameters.values()
             if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
    for p in signature.parameters.values():
        if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD) and bound.arguments.get(p.name):
            raise TypeError(f"fx cannot trace inputs passed through forward()'s *{p.name}")
    given = {p.name for p in fixed if p.name in bound.arguments}
    missing = [p.name for p in fixed if p.name not in given and p.default is inspect.Parameter.empty]
    if missing:
        raise TypeError(f"inputs lack forward() argument(s) {', '.join(missing)}")
    concrete = {p.name: p.default for p in fixed if p.name not in given}

    tracer = torch.fx.Tracer()
    tracer.record_stack_traces = True  # gives nodes meta["stack_trace"] for source locations
    graph = tracer.trace(model, concrete_args=concrete or None)
    module = torch.fx.GraphModule(tracer.root, graph, type(model).__name__)
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(fixed):
        raise TypeError(f"fx made {len(placeholders)} inputs for {len(fixed)} forward() arguments")
    values = [bound.arguments[p.name] if p.name in given else p.default for p in fixed]
    return module, values, [p.name in given for p in fixed]


def _fetch_attr(root: torch.nn.Module, target: str) -> Any:
    value: Any = root
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _printable(fn: Any) -> str:
    """``torch.nn.functional.gelu`` rather than ``torch._C._nn.gelu``."""
    name = getattr(fn, "__name__", str(fn))
    for prefix, namespace in (("torch.nn.functional", torch.nn.functional), ("torch", torch), ("operator", operator)):
        if getattr(namespace, name, None) is fn:
            return f"{prefix}.{name}"
    return f"{getattr(fn, '__module__', None) or '?'}.{getattr(fn, '__qualname__', name)}"


def _positional_names(fn: Any) -> list[str] | None:
    """Names of a Python function's positional parameters, None for builtins: those (torch's
    C functions, ``operator.add``) take their arguments in the canonical order already, while
    Python ones may not (``F.embedding(input, weight)`` vs ``embedding(weight, indices)``)."""
    if not inspect.isfunction(fn):
        return None
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in params if p.kind in kinds]


def _index_steps(index: Any, ndim: int) -> list[tuple[str, tuple]] | None:
    """``x[index]`` as select/slice/unsqueeze steps (``(op, args after x)``), or None when the
    index holds something else (tensors, bools, lists)."""
    items = index if isinstance(index, tuple) else (index,)
    for item in items:
        if isinstance(item, bool) or not (isinstance(item, (int, slice)) or item is None or item is Ellipsis):
            return None
        if isinstance(item, slice) and not all(isinstance(v, (int, type(None))) for v in (item.start, item.stop, item.step)):
            return None
    steps: list[tuple[str, tuple]] = []
    dim = 0
    for item in items:
        if item is Ellipsis:
            dim += ndim - sum(1 for i in items if i is not None and i is not Ellipsis)
        elif item is None:
            steps.append(("unsqueeze", (dim,)))
            dim += 1
        elif isinstance(item, int):
            steps.append(("select", (dim, item)))  # the dim disappears: the next item indexes the same position
        else:
            if (item.start, item.stop, item.step) not in ((None, None, None), (None, None, 1)):
                steps.append(("slice", (dim, item.start, item.stop, item.step or 1)))
            dim += 1
    return steps


def _step_shape(shape: tuple[int, ...], op: str, args: tuple) -> tuple[int, ...]:
    """The shape after one indexing step, computed on a meta tensor (no data)."""
    t = torch.empty(shape, device="meta")
    if op == "select":
        t = t.select(*args)
    elif op == "unsqueeze":
        t = t.unsqueeze(*args)
    else:
        dim, start, end, step = args
        t = t[(slice(None),) * dim + (slice(start, end, step),)]
    return tuple(t.shape)


class _Builder:
    """Turns the traced fx graph plus the recorded run into a CapturedGraph."""

    def __init__(self, model: torch.nn.Module, gm: torch.fx.GraphModule, seen: dict[torch.fx.Node, _Seen]) -> None:
        self.model, self.gm, self.seen = model, gm, seen
        self.names = UniqueNames()
        for node in gm.graph.nodes:
            self.names.taken.add(node.name)
        self.env: dict[torch.fx.Node, Any] = {}  # fx node -> Ref or folded constant
        self.shapes: dict[str, Any] = {}
        self.nodes: list[OpNode] = []
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.aliases = TensorAliases.of(model)
        self.param_of_group: dict[int, str] = {}
        self.params: dict[str, list[str]] = {}
        self._add_params()

    # -- helpers -------------------------------------------------------------------------
    def emit(self, node: OpNode) -> Ref:
        self.nodes.append(node)
        self.shapes[node.name] = node.shape
        return Ref(node.name)

    def _add_params(self) -> None:
        """One ``param`` node per parameter/buffer tensor, in the model's order, as export does."""
        for index, (names, kind) in enumerate(zip(self.aliases.groups, self.aliases.kinds)):
            tensor = _fetch_attr(self.model, names[0])
            name = self.names.claim(param_node_name(names[0], kind))
            self.param_of_group[index] = name
            self.params[name] = list(names)
            shape, dtype = shape_and_dtype(tensor)
            self.emit(OpNode(name, "param", (), {}, names[0], shape, dtype, module=owner_module(names[0])))

    def param_ref(self, tensor: torch.Tensor | None) -> Ref | None:
        if tensor is None:
            return None
        group = self.aliases.group_of(tensor)
        if group is None:
            raise TypeError("a module uses a tensor that is neither a parameter nor a buffer")
        return Ref(self.param_of_group[group])

    def resolve(self, value: Any) -> Any:
        """fx nodes in (nested) arguments -> Refs or their folded constants."""
        if isinstance(value, torch.fx.Node):
            return self.env[value]
        if isinstance(value, (list, tuple)):
            return type(value)(self.resolve(v) for v in value)
        if isinstance(value, dict):
            return {k: self.resolve(v) for k, v in value.items()}
        if isinstance(value, slice):
            return slice(self.resolve(value.start), self.resolve(value.stop), self.resolve(value.step))
        return value

    def shape_of(self, ref: Ref) -> Any:
        return self.shapes.get(ref.name)

    def add_op(self, name: str, source_op: str, args: tuple, kwargs: dict, target: str, fx_node: torch.fx.Node,
               arg_names: list[str] | None = None, shape: Any = None, dtype: Any = None) -> Ref:
        seen = self.seen.get(fx_node, _Seen())
        shape = seen.shape if shape is None else shape
        dtype = seen.dtype if dtype is None else dtype
        op, args, kwargs = normalize_op(source_op, args, kwargs, arg_names=arg_names, out_shape=shape,
                                        shape_of=self.shape_of)
        source, code = source_location(fx_node.meta.get("stack_trace"))
        module = fx_node.target if fx_node.op == "call_module" else module_path(fx_node.meta)
        return self.emit(OpNode(name, op, args, kwargs, target, shape, dtype, source, code, module))

    # -- node kinds ----------------------------------------------------------------------
    def placeholder(self, node: torch.fx.Node, value: Any, given: bool) -> None:
        seen = self.seen.get(node, _Seen())
        if given and seen.is_tensor:
            self.inputs.append(node.name)
            self.env[node] = self.emit(OpNode(node.name, "input", (), {}, str(node.target), seen.shape, seen.dtype))
        else:
            self.env[node] = value  # defaulted or non-tensor argument: a constant of this trace

    def get_attr(self, node: torch.fx.Node) -> None:
        value = _fetch_attr(self.gm, node.target)
        if isinstance(value, torch.Tensor) and self.aliases.group_of(value) is not None:
            self.env[node] = self.param_ref(value)
        elif isinstance(value, torch.Tensor):
            shape, dtype = shape_and_dtype(value)
            self.env[node] = self.emit(OpNode(node.name, "constant", (), {}, node.target, shape, dtype,
                                              module=owner_module(node.target)))
        else:
            self.env[node] = value

    def call_module(self, node: torch.fx.Node) -> None:
        module = self.gm.get_submodule(node.target)
        op, args, kwargs = module_call(module, self.resolve(node.args), self.resolve(dict(node.kwargs)), self.param_ref)
        self.env[node] = self.add_op(node.name, op, args, kwargs, type(module).__name__, node)

    def call(self, node: torch.fx.Node) -> None:
        """call_function / call_method, including the indexing and getattr special cases."""
        args, kwargs = self.resolve(node.args), self.resolve(dict(node.kwargs))
        arg_names = None
        in_place = False
        if node.op == "call_method":
            name = node.target
            in_place = name.endswith("_") and not name.startswith("_") and bool(node.args) \
                and isinstance(node.args[0], torch.fx.Node)
            if name in _SIZE_VARARGS and len(args) >= 2 and not isinstance(args[1], (list, tuple)):
                args = (args[0], list(args[1:]))
            target = name
        else:
            fn = node.target
            name = getattr(fn, "__name__", str(fn))
            target = _printable(fn)
            if canonical_name(name) in SIGNATURES:
                arg_names = _positional_names(fn)
            first = node.args[0] if node.args else None
            indexed = self.seen.get(first) if isinstance(first, torch.fx.Node) else None
            if fn is operator.getitem and indexed is not None and indexed.is_tensor and not indexed.multi:
                self.env[node] = self.tensor_index(node, args[0], args[1])
                return
            if fn is getattr and args[1] in _TENSOR_ATTRIBUTES:
                name, args = _TENSOR_ATTRIBUTES[args[1]], args[:1]
        self.env[node] = self.add_op(node.name, name, args, kwargs, target, node, arg_names)
        if in_place:
            # fx does not see mutation: later reads of the mutated tensor still name its old
            # node. From here on they read the in-place op's result, as in torch.export.
            self.env[node.args[0]] = self.env[node]

    def tensor_index(self, node: torch.fx.Node, x: Any, index: Any) -> Ref:
        """``x[...]`` on a tensor: a chain of select/slice/unsqueeze nodes, the last one named
        after the fx node; ``getitem`` with the raw index when it is not a basic index."""
        shape = self.shape_of(x) if isinstance(x, Ref) else None
        steps = _index_steps(index, len(shape)) if shape is not None else None
        if steps is None:
            return self.add_op(node.name, "getitem", (x, index), {}, "operator.getitem", node)
        if not steps:
            return self.add_op(node.name, "identity", (x,), {}, "operator.getitem", node)
        for i, (op, rest) in enumerate(steps):
            last = i == len(steps) - 1
            shape = _step_shape(shape, op, rest)
            name = node.name if last else self.names.claim(f"{node.name}_{op}")
            x = self.add_op(name, op, (x,) + rest, {}, "operator.getitem", node,
                            shape=None if last else shape, dtype=None)
        return x

    def output(self, node: torch.fx.Node) -> None:
        refs = tuple(r for r in (self.env.get(leaf) for leaf in tree_leaves(node.args[0])
                                 if isinstance(leaf, torch.fx.Node)) if isinstance(r, Ref))
        self.outputs = [r.name for r in refs]
        self.emit(OpNode(node.name, "output", refs, {}, "output"))

    def build(self, values: list[Any], given: list[bool]) -> CapturedGraph:
        placeholders = iter(zip(values, given))
        for node in self.gm.graph.nodes:
            seen = self.seen.get(node, _Seen())
            if node.op == "placeholder":
                self.placeholder(node, *next(placeholders))
            elif node.op == "get_attr":
                self.get_attr(node)
            elif node.op == "output":
                self.output(node)
            elif seen.is_constant:
                self.env[node] = seen.value  # shape arithmetic, asserts...: fold into the users
            elif node.op == "call_module":
                self.call_module(node)
            else:
                self.call(node)
        # user inputs come right after the params, as in export
        first = len(self.params)
        inputs = [n for n in self.nodes if n.op == "input"]
        rest = [n for n in self.nodes[first:] if n.op != "input"]
        self.nodes[first:] = inputs + rest
        return CapturedGraph("fx", self.nodes, self.params, self.inputs, self.outputs)


def capture_fx(model: torch.nn.Module, inputs: Any) -> CapturedGraph:
    """Capture ``model`` on example ``inputs`` with ``torch.fx`` symbolic tracing.

    >>> g = capture_fx(torch.nn.Sequential(torch.nn.Linear(4, 2)), {"input": torch.randn(3, 4)})
    >>> [n.op for n in g.nodes]
    ['param', 'param', 'input', 'linear', 'output']
    """
    gm, values, given = _trace(model, inputs)
    recorder = _Recorder(gm)
    with torch.no_grad():
        recorder.run(*values, enable_io_processing=False)
    return _Builder(model, gm, recorder.seen).build(values, given)
