"""Evaluate chosen graph nodes of one architecture for any set of weights.

The model is captured once per input signature (shapes and dtypes of the forward()
arguments): :func:`symdsl.graph.capture.capture` plus the static propagation give the node
types and so the :class:`~.activation_graph.Plan` of every node to read. Values come from one
of two evaluators:

* ``export`` (default): the same ``torch.export`` program, run with :class:`torch.fx.Interpreter`
  with the state's tensors fed in as the lifted parameters; any node can be read. The
  captured graph of the export backend names its nodes as the program does.
* ``hooks``: forward hooks on the modules the captured nodes were made in
  (``OpNode.module``), with the weights swapped in by ``torch.func.functional_call``. Only
  nodes that are a module's output are readable (q/k/v projections, MLP activations, norms,
  but not an attention op inside a module); used when the model cannot be exported, or on
  request.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from symdsl.errors import UsageError
from symdsl.graph.capture import BUILTIN_BACKENDS, capture
from symdsl.graph.capture_common import TensorAliases, without_kv_cache
from symdsl.graph.ops import builtin_op_rules
from symdsl.graph.propagate import propagate
from symdsl.models.kernels import EXACT_EXPERTS, experts_implementation, use_exact_kernels
from symdsl.spec.binding import ResolvedSpec

from .activation_graph import Plan, select_plans

State = Mapping[str, torch.Tensor]


@dataclass
class Program:
    """One input signature's capture: the plans per family and how to evaluate their nodes."""

    plans: dict[str, list[Plan]]
    notes: list[str]
    evaluator: str
    findings: int
    exported: Any = None                                   # torch.export.ExportedProgram
    hooks: dict[str, list[str]] = field(default_factory=dict)   # node -> modules returning it, innermost first

    @property
    def numel(self) -> dict[str, int]:
        """Node -> number of elements of its value (from the plans' factor shapes)."""
        out = {}
        for plan in self.all_plans():
            n = 1
            for size in plan.shape:
                n *= size
            out[plan.node] = n
        return out

    def all_plans(self) -> list[Plan]:
        return [p for plans in self.plans.values() for p in plans]


class ActivationRunner:
    """Read the activations of the planned nodes for a state dict and a batch.

    >>> from symdsl.plugins import load
    >>> from symdsl.spec import load_spec_text, resolve
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)).double()
    >>> spec = load_spec_text("symdsl: 1\\nname: t\\nsites: {h: {group: permutation, size: 4}}\\n"
    ...                       "tensors: {0.weight: h _, 0.bias: h, 2.weight: _ h'}\\ninvariant: [2.bias]\\n")
    >>> runner = ActivationRunner(resolve(spec, net, registries=load()), net, device="cpu", dtype=torch.float64)
    >>> batch = {"input": torch.randn(5, 3, dtype=torch.float64)}
    >>> program = runner.program(batch)
    >>> [p.label for p in program.all_plans()]          # the MLP's pre- and post-activation
    ['linear', 'relu']
    >>> runner.run(program, net.state_dict(), batch)["relu"].shape
    torch.Size([5, 4])
    """

    def __init__(self, resolved: ResolvedSpec, model: torch.nn.Module, *, device, dtype: torch.dtype,
                 evaluator: str = "auto", op_rules: Mapping[str, Any] | None = None,
                 backends: Mapping[str, Any] = BUILTIN_BACKENDS):
        if evaluator not in ("auto", "export", "hooks"):
            raise UsageError(f"activation matching: evaluator must be 'auto', 'export' or 'hooks', got {evaluator!r}")
        self.resolved = resolved
        # the run's rule table and capture backends (registries.op_rules / .capture_backends);
        # called directly, the built-in ones
        self.op_rules = op_rules if op_rules is not None else builtin_op_rules()
        self.backends = backends
        self.device = torch.device(device)
        self.dtype = dtype
        self.evaluator = evaluator
        self.model = _prepared(model, self.device, dtype)
        # as the checks do: a mixture's experts through plain gathers and batched matmuls, which
        # trace to typed nodes (the default grouped kernel sorts the routing, which no rule follows)
        self.kernel_notes = use_exact_kernels(self.model)
        self.aliases = TensorAliases.of(self.model)
        self._programs: dict[tuple, Program] = {}

    # ------------------------------------------------------------------ inputs and states

    def batch(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """The batch on the runner's device, floating tensors in its dtype."""
        if not isinstance(batch, Mapping):
            raise UsageError(f"activation matching: each batch must be a dict of forward() keyword arguments, "
                             f"got {type(batch).__name__}")
        return {k: (v.to(self.device, self.dtype if v.is_floating_point() else v.dtype)
                    if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}

    def state(self, state: State) -> dict[str, torch.Tensor]:
        """A state dict on the runner's device, floating tensors in its dtype."""
        return {k: v.detach().to(self.device, self.dtype if v.is_floating_point() else v.dtype)
                for k, v in state.items()}

    def _tensor(self, state: State, name: str, fallback: torch.Tensor | None) -> torch.Tensor:
        """``state[name]``, or a tied alias of it; else ``fallback`` (buffers: the model's own)."""
        if name in state:
            return state[name]
        group = self.aliases.group(name)
        for alias in self.aliases.groups[group] if group is not None else []:
            if alias in state:
                return state[alias]
        if fallback is None:
            raise UsageError(f"activation matching: the state dict has no tensor '{name}' (nor a tied alias of it)")
        return fallback

    # ------------------------------------------------------------------ capture

    def program(self, batch: Mapping[str, Any]) -> Program:
        """The capture for this batch's input signature (cached)."""
        key = tuple(sorted((k, tuple(v.shape), str(v.dtype)) if isinstance(v, torch.Tensor) else (k, repr(v))
                           for k, v in batch.items()))
        if key not in self._programs:
            self._programs[key] = self._capture(batch)
        return self._programs[key]

    def _capture(self, batch: Mapping[str, Any]) -> Program:
        graph = capture(self.model, dict(batch), backends=self.backends)
        state = self.model.state_dict(keep_vars=True)

        def parameter(node_name: str):
            names = graph.params.get(node_name, [])
            return state[names[0]].detach() if names and names[0] in state else None

        result = propagate(graph, self.resolved, parameter, op_rules=self.op_rules)
        plans, notes = select_plans(graph, result.values, self.resolved)
        notes = [*self.kernel_notes, *notes]
        findings = len(result.findings)
        if findings:
            first = result.findings[0]
            notes.append(f"the static check found {findings} violation(s) on this model (first, at node {first.node}: "
                         f"{first.message}); nodes after a violation carry no type and are not read")
        evaluator = self.evaluator
        exported = None
        if evaluator in ("auto", "export") and graph.backend == "export":
            try:
                with without_kv_cache(self.model):   # as capture() does: a KV cache is an output export cannot follow
                    exported = torch.export.export(self.model, args=(), kwargs=dict(batch), strict=False)
                wanted = {n for p in _flat(plans) for n in p.nodes}
                with torch.no_grad():   # a dry run on the model's own weights: every planned node must come back
                    got = self._run_export(exported, {}, batch, wanted)
                if set(got) != wanted:
                    raise RuntimeError(f"nodes {sorted(wanted - set(got))[:3]} are not in the exported program")
                evaluator = "export"
            except Exception as exc:   # any failure: read module outputs instead
                if self.evaluator == "export":
                    raise UsageError(f"activation matching: torch.export of {type(self.model).__name__} failed: {exc}")
                notes.append(f"export evaluator unavailable ({type(exc).__name__}: {exc}); reading module outputs")
                exported = None
        elif evaluator == "export":
            raise UsageError(f"activation matching: {type(self.model).__name__} could only be captured with "
                             f"{graph.backend}, not torch.export; use evaluator='hooks'")
        hooks: dict[str, list[str]] = {}
        if exported is None:
            evaluator = "hooks"
            hooks = _module_outputs(graph)
            for root, family_plans in plans.items():
                kept = [p for p in family_plans if all(n in hooks for n in p.nodes)]
                for p in family_plans:
                    if p not in kept:
                        notes.append(f"{root}: node {p.node} skipped: not a module output (hooks evaluator)")
                plans[root] = kept
        return Program(plans, notes, evaluator, findings, exported, hooks)

    # ------------------------------------------------------------------ evaluation

    def run(self, program: Program, state: State, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """{node name: value} for every planned node, the model's weights taken from ``state``."""
        wanted = {n for p in program.all_plans() for n in p.nodes}
        with torch.no_grad():
            if program.evaluator == "export":
                return self._run_export(program.exported, state, batch, wanted)
            return self._run_hooks(program, state, batch, wanted)

    def _run_export(self, ep, state: State, batch: Mapping[str, Any], wanted: set[str]) -> dict[str, torch.Tensor]:
        from torch.export.graph_signature import InputKind

        flat = list(ep._graph_module_flat_inputs((), dict(batch)))   # ep's own tensors + the batch, in order
        specs = ep.graph_signature.input_specs
        if len(flat) != len(specs):
            raise RuntimeError(f"exported program expects {len(specs)} inputs, got {len(flat)}")
        for i, spec in enumerate(specs):
            if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER):
                own = flat[i] if spec.kind == InputKind.BUFFER or not state else None   # a dry run uses the model's
                flat[i] = self._tensor(state, spec.target, own)
        recorder = _Recorder(ep.graph_module, wanted)
        recorder.run(*flat)
        return recorder.values

    def _run_hooks(self, program: Program, state: State, batch: Mapping[str, Any],
                   wanted: set[str]) -> dict[str, torch.Tensor]:
        values: dict[str, torch.Tensor] = {}
        numel = program.numel
        handles = []
        by_module: dict[str, list[str]] = {}
        for node in wanted:
            for module in program.hooks[node]:
                by_module.setdefault(module, []).append(node)
        for module_name, nodes in by_module.items():
            def hook(module, args, output, nodes=nodes):
                # modules finish innermost first: the first tensor of the right size is the node's value
                for node in nodes:
                    if node not in values and isinstance(output, torch.Tensor) and output.numel() == numel[node]:
                        values[node] = output
            handles.append(self.model.get_submodule(module_name).register_forward_hook(hook))
        own = self.model.state_dict(keep_vars=True)
        weights = {}
        for names, kind in zip(self.aliases.groups, self.aliases.kinds):   # one name per tied group
            if names[0] in own:
                weights[names[0]] = self._tensor(state, names[0], None if kind == "param" and state else own[names[0]])
        try:
            torch.func.functional_call(self.model, weights, args=(), kwargs=dict(batch), strict=False)
        finally:
            for handle in handles:
                handle.remove()
        return values


class _Recorder(torch.fx.Interpreter):
    """Runs a graph module and keeps the outputs of the wanted nodes."""

    def __init__(self, module: torch.fx.GraphModule, wanted: set[str]):
        super().__init__(module)
        self.wanted = wanted
        self.values: dict[str, torch.Tensor] = {}

    def run_node(self, node: torch.fx.Node) -> Any:
        result = super().run_node(node)
        if node.name in self.wanted:
            self.values[node.name] = result
        return result


def _flat(plans: Mapping[str, list[Plan]]) -> list[Plan]:
    return [p for group in plans.values() for p in group]


def _prepared(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The model in eval mode on ``device`` in ``dtype``; a copy unless it already is."""
    tensors = [t for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()]
    ready = (not model.training and all(t.device == device and t.dtype == dtype for t in tensors)
             and experts_implementation(model) in (None, EXACT_EXPERTS))     # else the kernel switch needs a copy
    if ready:
        return model
    return copy.deepcopy(model).to(device=device, dtype=dtype).eval()


# layout ops that keep the row-major order of elements: a module output after them is the same data
_ORDER_KEEPING = frozenset({"view", "reshape", "_unsafe_view", "flatten", "unflatten", "identity", "contiguous",
                            "clone", "alias", "to", "detach", "unsqueeze", "squeeze", "type_as"})


def _module_outputs(graph) -> dict[str, list[str]]:
    """Node -> the modules (innermost first) whose forward() may return its value.

    The last node made inside a module's scope (its own nodes and its submodules') is its
    output when the module returns one tensor; an order-keeping layout op at the end (the
    view after an addmm) stands for the node it shows.
    """
    last: dict[str, int] = {}
    for index, node in enumerate(graph.nodes):
        module = node.module
        while module:                                   # every enclosing scope ends here or later
            last[module] = index
            module = module.rpartition(".")[0]
    out: dict[str, list[str]] = {}
    for module, index in sorted(last.items(), key=lambda item: -item[0].count(".")):
        node = graph.nodes[index]
        while node.op in _ORDER_KEEPING and node.refs():
            node = graph.node(node.refs()[0].name)
        out.setdefault(node.name, []).append(module)
    return out
