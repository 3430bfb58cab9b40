"""The alignment pipeline as a library: canonicalize, match, transform, merge, measure.

>>> # from symdsl.pipeline import align_pair
>>> # pair = align_pair(model_a, model_b)            # spec found from the registry
>>> # pair.aligned_b  -> B's state dict in A's frame; pair.result.objective -> per sweep
"""
from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from .act import act_state_dict
from .canon import canonicalize
from .errors import UsageError
from .match import MatchResult, get_matcher
from .merge import get_merger
from .spec import ResolvedSpec
from .spec.cache import resolve_cached
from .spec.load import Spec
from .spec.registry import find_spec, match_spec


@dataclass
class Prepared:
    """Canonical copies of the models, their spec bound once, and their state dicts."""

    spec: Spec
    resolved: ResolvedSpec
    models: list[torch.nn.Module]
    states: list[dict[str, torch.Tensor]]


def prepare(models: Sequence[torch.nn.Module], spec: Spec | str | None = None, *, device=None) -> Prepared:
    """Copy and canonicalize every model (function-preserving) under one spec."""
    if len(models) < 2:
        raise UsageError("alignment needs at least two models")
    kinds = {type(m).__name__ for m in models}
    if len(kinds) > 1:
        raise UsageError(f"models are of different classes: {sorted(kinds)}")
    spec = find_spec(spec) if isinstance(spec, str) else (spec or match_spec(models[0]))
    copies = []
    for model in models:
        model = copy.deepcopy(model).eval()
        if device is not None:
            model.to(device)
        canonicalize(model, resolve_cached(spec, model))
        copies.append(model)
    resolved = resolve_cached(spec, copies[0])
    shapes = [{k: tuple(v.shape) for k, v in m.state_dict().items()} for m in copies]
    for index, other in enumerate(shapes[1:], start=1):
        if other != shapes[0]:
            bad = next(k for k in shapes[0] if other.get(k) != shapes[0][k])
            raise UsageError(f"model {index} differs from model 0 at '{bad}': {other.get(bad)} vs {shapes[0][bad]}; "
                             "models of different widths need width-heterogeneous alignment")
    states = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in copies]
    return Prepared(spec, resolved, copies, states)


@dataclass
class Alignment:
    """B aligned to A: the matcher's result and B's transformed state dict."""

    prepared: Prepared
    result: MatchResult
    aligned_b: dict[str, torch.Tensor]
    info: dict[str, Any] = field(default_factory=dict)


def forward_kwargs(model: torch.nn.Module, inputs: torch.Tensor, task: str) -> dict[str, torch.Tensor]:
    """How a batch is passed to forward(): ``input_ids`` for language models, the first argument otherwise."""
    if task == "language_model":
        return {"input_ids": inputs}
    first = next(iter(inspect.signature(model.forward).parameters))
    return {first: inputs}


def match(prepared: Prepared, index: int, matcher: str = "weight", *, data=None, batches: int = 8,
          progress=None, seed: int = 0, **options) -> MatchResult:
    """Align model ``index`` to model 0 with the named matcher."""
    chosen = get_matcher(matcher)
    if chosen.needs_data:
        if data is None:
            raise UsageError(f"matcher '{matcher}' looks at activations: pass --data")
        from .data import load_dataset

        dataset = load_dataset(data)
        model = prepared.models[0]
        if getattr(chosen, "data_mode", "activations") == "dataset":
            return chosen.match(prepared.resolved, prepared.states[0], prepared.states[index], seed=seed,
                                progress=progress, model=model, dataset=dataset, **options)
        dtype = next(model.parameters()).dtype
        device = next(model.parameters()).device
        feed = []
        for i, (x, _) in enumerate(dataset.batches("train", 64, shuffle=True, seed=seed)):
            if i >= batches:
                break
            x = x.to(device=device, dtype=dtype if x.is_floating_point() else x.dtype)
            feed.append(forward_kwargs(model, x, dataset.task))
        options = {**options, "model": model, "batches": feed}
    return chosen.match(prepared.resolved, prepared.states[0], prepared.states[index], seed=seed,
                        progress=progress, **options)


def align_pair(model_a: torch.nn.Module, model_b: torch.nn.Module, spec: Spec | str | None = None,
               matcher: str = "weight", *, device=None, **options) -> Alignment:
    """Canonicalize A and B, find B's transform with ``matcher``, return B's aligned state dict."""
    prepared = prepare([model_a, model_b], spec, device=device)
    result = match(prepared, 1, matcher, **options)
    aligned = act_state_dict(prepared.resolved, prepared.states[1], result.elements)
    return Alignment(prepared, result, aligned)


def merge_models(models: Sequence[torch.nn.Module], spec: Spec | str | None = None, matcher: str = "weight", *,
                 weights: Sequence[float] | None = None, merger: str = "average", device=None,
                 **options) -> tuple[torch.nn.Module, list[MatchResult]]:
    """Align every model to the first and merge them; returns a standard model of the first's class."""
    prepared = prepare(models, spec, device=device)
    results, aligned = [], [prepared.states[0]]
    for index in range(1, len(models)):
        result = match(prepared, index, matcher, **options)
        results.append(result)
        aligned.append(act_state_dict(prepared.resolved, prepared.states[index], result.elements))
    merged_state = get_merger(merger).merge(aligned, weights)
    merged = prepared.models[0]
    merged.load_state_dict(merged_state)
    return merged, results
