"""Static check: propagate the spec's symmetry types through the model's traced graph.

Where the numeric check says *that* a spec is wrong, this says *where and why*: the graph
node, the user's source line, the spec entry and the rule broken.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..canon import canonicalize
from ..graph.capture import capture
from ..graph.output_names import is_intermediate, keep_outputs, output_names
from ..graph.propagate import Finding, propagate
from ..graph.walker import OpRules
from ..models.build import build_example, make_inputs
from ..models.kernels import use_exact_kernels
from ..spec.load import Spec
from ..spec.cache import resolve_cached
from ..registry import Registries
from ..spec.config import model_config


@dataclass
class StaticReport:
    """Violations found on the graph, and coverage notes."""

    spec: str
    model: str
    backend: str
    nodes: int
    findings: list[Finding] = field(default_factory=list)
    unused_tensors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)      # kernels switched for the trace

    @property
    def ok(self) -> bool:
        return not self.findings

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        return data


def static_check(spec: Spec, model: torch.nn.Module | None = None, *, registries: Registries,
                 backend: str = "auto", seed: int = 0) -> StaticReport:
    """Trace the (canonicalized) model and check every op against the spec's symmetry types.

    ``registries`` supplies the group kinds, canonicalizers, op rules and capture backends.

    >>> from symdsl.plugins import load
    >>> from symdsl.spec.registry import find_spec
    >>> static_check(find_spec("timm-vit", load()), registries=load()).ok
    True
    """
    model = build_example(spec, seed=seed) if model is None else copy.deepcopy(model)
    # the trace follows the kernels the numeric check runs (e.g. batched experts: plain ops)
    notes = use_exact_kernels(model)
    model = model.to(torch.float64).eval()
    resolved = resolve_cached(spec, model, registries)
    canonicalize(model, resolved)
    names = {**model_config(model), **resolved.dims}
    inputs = make_inputs(spec, names, seed=seed)
    graph = capture(model, inputs, backend=backend, backends=registries.capture_backends)
    primary = spec.document.example.output if spec.document.example else None
    if primary:
        # beside its primary output the spec claims nothing about its parts' intermediate states
        # (CLIPModel's tower outputs, T5's encoder states); every other output is still checked
        names_out = output_names(model, inputs, len(graph.outputs))
        if names_out is not None:
            keep_outputs(graph, [p for p, n in enumerate(names_out)
                                 if n == primary or n in resolved.outputs or not is_intermediate(n)])
    state = model.state_dict(keep_vars=True)

    def parameter(node_name: str):
        aliases = graph.params.get(node_name, [])
        return state[aliases[0]].detach() if aliases and aliases[0] in state else None

    buffers = dict(model.named_buffers())      # non-persistent ones too (not in the state dict)

    def buffer(node_name: str):
        aliases = graph.params.get(node_name, [])
        return buffers[aliases[0]].detach() if aliases and aliases[0] in buffers else None

    result = propagate(graph, resolved, parameter, op_rules=registries.op_rules, buffer=buffer)
    return StaticReport(spec.name, type(model).__name__, graph.backend, result.checked_nodes,
                        result.findings, result.unused_tensors, notes)
