"""Infer a draft spec from a model, without a spec: ``symdsl infer --model REF``.

The model is traced once (:func:`symdsl.graph.capture`); every parameter axis gets a variable,
and the ops of the graph unite variables that must transform together (:mod:`.walk`,
:mod:`.rules`). Each resulting component gets the largest group its uses admit
(:mod:`.groups`), norms whose gains can be folded get ``fold_layernorm`` steps (:mod:`.canon`),
and the draft is written as a commented YAML spec (:mod:`.draft`, :mod:`.emit`) that
:func:`check_draft` runs through the static and numeric checks.

>>> from symdsl.plugins import load
>>> from symdsl.spec.registry import find_spec
>>> from symdsl.models import build_example
>>> draft = infer_spec(build_example(find_spec("timm-vit", load())), registries=load())
>>> draft.site_counts()
{'orthogonal+ones': 1, 'permutation': 4, 'invertible per head': 4}
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from ..check.numeric import numeric_check
from ..check.static import static_check
from ..errors import SymdslError
from ..graph.capture import capture
from ..graph.output_names import keep_outputs, output_names
from ..models.kernels import use_exact_kernels
from ..registry import Registries
from ..spec.load import load_spec_text
from .draft import Draft, build_draft
from .emit import render
from .example import example_section, library, materialize
from .outputs import feature_outputs, plan_outputs
from .walk import walk

__all__ = ["Draft", "DraftCheck", "infer_spec", "check_draft"]


def infer_spec(model: torch.nn.Module, *, factory: str | None = None, timm_name: str | None = None,
               config: Mapping[str, Any] | None = None, inputs: Mapping[str, Any] | None = None,
               name: str | None = None, backend: str = "auto", seed: int = 0, registries: Registries) -> Draft:
    """Trace ``model`` and return a draft spec (``draft.text`` is the YAML).

    ``factory``/``timm_name``/``config`` say how ``symdsl check`` can rebuild the model (see
    :func:`symdsl.infer.example.example_section`; transformers models need none of them);
    ``inputs`` are forward() keyword arguments as spec input entries
    (``{"x": {"randn": True, "shape": [2, 3, 8, 8]}}``), guessed when not given. ``registries``
    supplies the capture backends and the canonicalizers the draft may name.

    >>> from symdsl.plugins import load
    >>> mlp = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> draft = infer_spec(mlp, factory="mymodels:mlp", registries=load())  # factory: how check rebuilds it
    >>> [(s.key, s.group, s.size_value) for s in draft.sites]
    [('mlp', 'permutation', 8)]
    >>> [(name, pattern) for name, pattern, _why in draft.tensors]
    [('0.weight', 'mlp _'), ('0.bias', 'mlp'), ('2.weight', "_ mlp'")]
    """
    example = example_section(model, factory=factory, timm_name=timm_name, config=config, inputs=inputs)
    names = dict(example.get("config") or {})
    if library(model) == "transformers":
        names = {**model.config.to_dict(), **names}
    model = copy.deepcopy(model).to(torch.float64).eval()
    kernels = use_exact_kernels(model)     # the kernels the checks trace and run (MoE experts: batched_mm)
    tensors = materialize(example["inputs"], names, seed=seed)
    graph = capture(model, tensors, backend=backend, backends=registries.capture_backends)
    # features (a backbone's hidden states) may carry a symmetry, declared equivariant under outputs:
    returned = output_names(model, tensors, len(graph.outputs))
    features = feature_outputs(model)
    plan = plan_outputs(returned, features)
    if plan.primary and returned is not None:
        example["output"] = plan.primary
        kept = [p for p in range(len(returned)) if p not in plan.ignored]
        keep_outputs(graph, kept)
        plan = plan_outputs([returned[p] for p in kept], features)      # the features, at their new positions
    analysis = walk(graph, set(model.state_dict()), registries.op_rules, features=plan.features,
                    buffers=dict(model.named_buffers()))
    draft = build_draft(model, graph, analysis, example, name, registries=registries)
    header = [f"Draft spec inferred by `symdsl infer` from the traced graph of {type(model).__name__} "
              f"({graph.backend}, {len(graph.nodes)} nodes). Every choice below is a guess from the graph, "
              "explained in a comment; `symdsl check` on this file tests all of them.",
              "Sites: " + (", ".join(f"{n} {k}" for k, n in draft.site_counts().items()) or "none")] + draft.info + kernels
    if draft.notes:
        header.append("Left unbound (conservative):")
        header += [f"- {note}" for note in draft.notes]
    if draft.warnings:
        header.append("Warnings:")
        header += [f"- {warning}" for warning in draft.warnings]
    draft.text = render(draft, header)
    return draft


@dataclass
class DraftCheck:
    """The static and numeric reports of a draft (``error``: why it could not be checked)."""

    static: Any = None
    numeric: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.static and self.static.ok) and bool(self.numeric and self.numeric.ok)


def check_draft(text: str, model: torch.nn.Module | None = None, *, registries: Registries, seed: int = 0,
                file: str = "<draft>", tolerance: float | None = None) -> DraftCheck:
    """Load a draft's YAML and run the static and numeric checks on its example (or ``model``).

    >>> from symdsl.models import build_example
    >>> from symdsl.plugins import load
    >>> from symdsl.spec.registry import find_spec
    >>> draft = infer_spec(build_example(find_spec("timm-vit", load())), registries=load())
    >>> check_draft(draft.text, registries=load()).ok
    True
    """
    result = DraftCheck()
    try:
        spec = load_spec_text(text, file, trust_code=True)   # the draft's factory is the caller's own model
        result.static = static_check(spec, model, seed=seed, registries=registries)
        extra = {"tolerance": tolerance} if tolerance is not None else {}
        result.numeric = numeric_check(spec, model, seed=seed, registries=registries, **extra)
    except SymdslError as exc:
        result.error = str(exc)
    return result
