"""``symdsl.merge``: align models to the first and average them into one model of its class.

Two models of one width: pairwise alignment. A narrower second model: lifted first. Three or
more: universe matching (optionally refined on data), or pairwise with ``pairwise=True``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ..errors import UsageError
from ..models import save_model
from ..models.origin import Origin, origin_of
from ..models.output import check_output
from ..models.save import check_savable
from ..models.save import output_dtype
from ..plugins import default_registries
from ..registry import Registries
from ..spec.inputs import with_input_shapes
from ..spec.load import Spec
from ..width import needs_lift
from .align import align, model_sources, refuse_architecture_change
from .compat import check_compatible, check_data_fits, check_finite
from .pipeline import dataset_for, matcher_options, merge_models, spec_for
from .universe_merge import merge_universe, universe_options
from .verify import verify_spec


@dataclass
class Merged:
    """The merged model (of the first model's class, in symdsl's canonical form) and how it was made.

    The merge is loaded into the first model's canonical copy, so the output keeps the first
    model's checkpoint layout, and carries its tokenizer and companion files (``origin.layout``
    is 0).
    """

    model: torch.nn.Module
    record: dict[str, Any] = field(default_factory=dict)
    details: Any = None          # the UniverseMerge of a universe merge (surfaces, transforms ...)
    origin: Origin = field(default_factory=Origin)   # the inputs: card's base models, model 0's tokenizer and dtype

    def save(self, folder: str | Path, provenance: dict[str, Any] | None = None, *, overwrite: bool = False,
             dtype: str = "auto") -> Path:
        """Write ``model`` as a standard checkpoint with the first model's companion files (tokenizer ...),
        a model card and ``symdsl.json``, atomically (an existing non-empty ``folder`` is refused
        unless ``overwrite``; see :func:`symdsl.models.save_model`). ``dtype``: ``auto`` (the first
        model's own), ``float32``, ``bfloat16`` or ``float16``."""
        return save_model(self.model.cpu(), folder, {**self.record, **(provenance or {})}, overwrite=overwrite,
                          kind="merge", origin=self.origin, dtype=dtype)


def merge(models: Sequence[torch.nn.Module], spec: Spec | str | None = None, matcher: str = "weight", *,
          weights: Sequence[float] | None = None, merger: str = "average", data=None, refine: bool = False,
          pairwise: bool = False, plot: str | Path | None = None, seed: int = 0, device=None,
          standard: bool = True, verify: bool = True, progress=None, out: str | Path | None = None,
          overwrite: bool = False, dtype: str = "auto", inputs: Mapping[str, Sequence[int]] | None = None,
          registries: Registries | None = None, **options: Any) -> Merged:
    """Align ``models[1:]`` to ``models[0]`` and merge them with ``merger`` (default: weighted average).

    Three or more models use universe matching unless ``pairwise``; ``refine`` (or
    ``matcher="learned"``) trains the universe transforms on ``data``; ``plot`` (three models)
    writes the loss over the simplex as a PNG. ``options`` go to the matcher. ``verify``: as in
    :func:`symdsl.align` (the spec must pass its checks on the first model). The models must be one
    architecture (:mod:`symdsl.api.compat`), checked before any work; ``out`` (a folder),
    ``overwrite`` and ``inputs`` (the example shapes the check runs on) as in :func:`symdsl.align`.

    >>> import symdsl, torch
    >>> nets = [torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)) for _ in range(2)]
    >>> spec = symdsl.load_spec_text('symdsl: 1\\nname: mlp\\nsites: {u: {group: permutation, size: 8}}\\n'
    ...                              'example: {inputs: {input: {randn: true, shape: [4, 3]}}}\\n'
    ...                              'tensors: {0.weight: "u _", 0.bias: u, 2.weight: "_ u\\'"}\\ninvariant: [2.bias]\\n')
    >>> merged = symdsl.merge(nets, spec)
    >>> type(merged.model).__name__, merged.record["method"]
    ('Sequential', 'pairwise')
    """
    registries = registries or default_registries()
    if len(models) < 2:
        raise UsageError("merging needs at least two models")
    options = merge_options(len(models), matcher, options, refine=refine, pairwise=pairwise, registries=registries)
    registries.mergers.lookup(merger)
    check_weights(weights, len(models))
    output_dtype(dtype)
    if out is not None:
        check_output(out, inputs=model_sources(models), overwrite=overwrite)
        check_savable(models[0])           # the merge is written as the first model's class
    spec = with_input_shapes(spec_for(spec, models[0], registries), inputs or {})
    check_compatible(models, spec, lift=len(models) == 2 and needs_lift(*models))
    check_finite(models)
    if data is not None:
        data = dataset_for(data, registries)
        check_data_fits(models[0], data)
    merged = _merge(models, spec, matcher, weights, merger, data, refine, pairwise, plot, seed, device, standard,
                    verify, progress, registries, options)
    merged.origin = origin_of(models, layout=0)
    if options:
        merged.record["options"] = dict(options)
    if out is not None:
        merged.save(out, overwrite=overwrite, dtype=dtype)
    return merged


def check_weights(weights: Sequence[float] | None, count: int) -> None:
    """Merge weights must be one finite number per model, not summing to zero (checked before any work).

    >>> check_weights([1.0, float("nan")], 2)
    Traceback (most recent call last):
    ...
    symdsl.errors.UsageError: merge weight 2 is nan: weights must be finite numbers
    """
    if weights is None:
        return
    if len(weights) != count:
        raise UsageError(f"{len(weights)} merge weights for {count} models: give one weight per model")
    for index, weight in enumerate(weights, start=1):
        if not math.isfinite(float(weight)):
            raise UsageError(f"merge weight {index} is {weight}: weights must be finite numbers")
    if abs(sum(float(w) for w in weights)) < 1e-12:
        raise UsageError("merge weights sum to zero: they are normalised to sum to one")


def merge_options(count: int, matcher: str, options: dict[str, Any], *, refine: bool = False, pairwise: bool = False,
                  registries: Registries) -> dict[str, Any]:
    """The options of a merge of ``count`` models checked before any work, coerced to their declared types.

    Pairwise merges (two models, or ``pairwise``) take the matcher's options; universe merges
    take universe matching's (and, with ``refine`` or matcher ``learned``, refinement's).

    >>> from symdsl.plugins import load
    >>> merge_options(3, "weight", {"steps": 5}, registries=load())
    Traceback (most recent call last):
    ...
    symdsl.errors.UsageError: option(s) ['steps'] are refinement options: refine the universe (refine=True; command line: --refine)
    """
    if count >= 3 and not pairwise:
        if matcher not in ("weight", "learned"):
            raise UsageError(f"universe merging uses weight matching (refined with refine=True or matcher 'learned'); "
                             f"for matcher '{matcher}' merge pairwise (pairwise=True; command line: --pairwise)")
        universe, refinement = universe_options(options, refine or matcher == "learned")
        return {**universe, **(refinement or {})}
    return matcher_options(matcher, options, registries)


def _merge(models, spec, matcher, weights, merger, data, refine, pairwise, plot, seed, device, standard, verify,
           progress, registries, options) -> Merged:
    if standard:
        refuse_architecture_change(spec, models[0], registries, "the merged model")
    if verify:
        verify_spec(spec, models[0], registries, seed=seed)
    started = time.perf_counter()
    if len(models) >= 3 and not pairwise:
        return _universe(models, spec, matcher, weights, merger, data, refine, plot, seed, device, progress,
                         registries, options, started)
    if refine or plot is not None:
        raise UsageError("refine and plot apply to universe merges of three or more models")
    chosen = registries.mergers.lookup(merger)
    if len(models) == 2 and needs_lift(*models):
        alignment = align(models[0], models[1], spec, matcher, data=data, seed=seed, device=device, standard=standard,
                          verify=False, progress=progress, registries=registries, **options)
        merged = alignment.prepared.models[0]
        merged.load_state_dict(chosen.merge([alignment.prepared.states[0], alignment.aligned_b], weights))
        return Merged(merged, {"method": "width lift", "weights": weights, "merger": merger,
                               "seconds": time.perf_counter() - started, "alignments": [alignment.record()]})
    merged, results = merge_models(models, spec, matcher, weights=weights, merger=merger, device=device, data=data,
                                   seed=seed, progress=progress, registries=registries, **options)
    return Merged(merged, {"method": "pairwise", "spec": spec.name, "weights": weights, "merger": merger,
                           "seconds": time.perf_counter() - started, "alignments": [r.to_record() for r in results]})


def _universe(models, spec, matcher, weights, merger, data, refine, plot, seed, device, progress, registries,
              options, started) -> Merged:
    if matcher not in ("weight", "learned"):
        raise UsageError(f"universe merging uses weight matching (refined with refine=True or matcher 'learned'); "
                         f"for matcher '{matcher}' merge pairwise (pairwise=True; command line: --pairwise)")
    refine = refine or matcher == "learned"
    universe, refinement = universe_options(options, refine)
    out = merge_universe(models, spec, refine=refine, dataset=data, weights=weights, merger=merger, surface_path=plot,
                         seed=seed, device=device, progress=progress, universe_options=universe,
                         refine_options=refinement, registries=registries)
    method = "universe" + (" + refinement" if refine else "")
    return Merged(out.model, {"method": method, "weights": weights, "merger": merger,
                              "seconds": time.perf_counter() - started, **out.to_record()}, out)
