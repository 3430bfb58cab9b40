"""Merge N >= 2 models through their universe: what ``symdsl merge A B C ...`` runs.

canonicalize every model (:func:`symdsl.api.pipeline.prepare`) -> universe matching (weight matching
onto leave-one-out universes, model 0's frame) -> optionally learned refinement of the N
transforms (lambda ~ Dirichlet(alpha * 1), needs data) -> weighted average of the aligned models,
loaded into model 0's canonical copy, so the result is a standard checkpoint of the first model's
class. For three models and a ``surface_path``, the simplex surfaces of the vanilla, universe and
refined alignments are evaluated and written as a PNG heat map plus JSON beside it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import torch

from pydantic import Field

from ..errors import UsageError
from ..learn.universe_refine import refine_universe
from ..match.universe import UniverseResult, universe_match
from ..options import Device, OptionsError, PluginOptions, describe_options
from ..plugins import default_registries
from ..registry import Registries
from .pipeline import dataset_for, prepare

SURFACE_LABELS = {"vanilla": "vanilla", "universe": "universe weight matching", "refined": "universe + refinement"}


class UniverseOptions(PluginOptions):
    """Options of universe matching (:func:`symdsl.match.universe.universe_match`) in a merge of 3+ models."""

    max_iter: int = Field(10, ge=0, description="universe sweeps")
    tol: float = Field(1e-3, ge=0, description="stop when a sweep improves the objective by less than this fraction")
    permutations_only: bool = Field(False, description="every site as its kind's permutation restriction")
    invertible_steps: int | None = Field(None, ge=0, description="L-BFGS steps per invertible site in each "
                                         "pairwise weight matching (none: weight matching's default)")
    weight_max_iter: int | None = Field(None, ge=0, description="sweeps of each pairwise weight matching")
    weight_tol: float | None = Field(None, ge=0, description="tolerance of each pairwise weight matching")


class RefineOptions(PluginOptions):
    """Options of universe refinement (:func:`symdsl.learn.universe_refine.refine_universe`; its DEFAULTS)."""

    alpha: float = Field(0.1, gt=0, description="merge weights sampled from Dirichlet(alpha * 1)")
    steps: int = Field(1000, ge=1, description="optimizer steps")
    lr: float = Field(0.003, gt=0, description="Adam learning rate")
    schedule: Literal["cosine", "constant"] = Field("cosine", description="learning-rate schedule")
    batch_size: int = Field(64, ge=1, description="training batch size")
    eval_every: int = Field(25, ge=1, description="steps between validations")
    patience: int = Field(20, ge=1, description="validations without improvement before "
                          "stopping")
    validation: float = Field(0.1, gt=0, lt=1, description="held-out fraction of the "
                              "train split")
    validation_batches: int = Field(4, ge=1, description="batches per validation")
    permutations_only: bool = Field(False, description="learn orthogonal sites as permutations")
    freeze: tuple[str, ...] = Field((), description="sites kept at their universe element")
    device: Device = Field(None, description="where to train (default: the models' device)")


def universe_options(options: Mapping[str, Any], refine: bool) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``options`` of a universe merge checked and split: (universe matching's, refinement's or None).

    >>> universe_options({"max_iter": "3", "steps": 5}, refine=True)
    ({'max_iter': 3}, {'steps': 5})
    """
    universe = {k: v for k, v in options.items() if k in UniverseOptions.model_fields}
    rest = {k: v for k, v in options.items() if k not in universe}
    unknown = sorted(set(rest) - set(RefineOptions.model_fields))
    if unknown:
        raise OptionsError(f"universe merge: no option(s) {unknown}; options: {describe_options(UniverseOptions)}; "
                           f"with refinement (refine=True, --refine) also: {describe_options(RefineOptions)}")
    if rest and not refine:
        raise UsageError(f"option(s) {sorted(rest)} are refinement options: refine the universe (refine=True; "
                         "command line: --refine)")
    checked = UniverseOptions.parse(universe, "universe merge").given()
    if not refine:
        return checked, None
    shared = {k: v for k, v in universe.items() if k in RefineOptions.model_fields}    # permutations_only
    return checked, RefineOptions.parse({**rest, **shared}, "universe refinement").given()


@dataclass
class UniverseMerge:
    """The merged model, the universe (and refined) transforms, and the surfaces if any were asked for."""

    model: torch.nn.Module
    universe: UniverseResult
    refined: UniverseResult | None = None
    surfaces: dict[str, Any] = field(default_factory=dict)      # label -> symdsl.evaluate.simplex.Surface
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def result(self) -> UniverseResult:
        """The transforms the merge used: the refined ones if refinement ran, else universe matching's."""
        return self.refined or self.universe

    def to_record(self) -> dict[str, Any]:
        """A JSON-serialisable summary (for ``symdsl.json``)."""
        return {"universe": self.universe.to_record(),
                "refined": None if self.refined is None else self.refined.to_record(),
                "surfaces": {label: s.summary() for label, s in self.surfaces.items()}, **self.info}


def merge_universe(models: Sequence[torch.nn.Module], spec=None, *, refine: bool = False, dataset=None,
                   weights: Sequence[float] | None = None, merger: str = "average",
                   surface_path: str | Path | None = None, resolution: int = 9, split: str = "test",
                   seed: int = 0, device=None, progress: Callable[[str, int, int], None] | None = None,
                   universe_options: Mapping[str, Any] | None = None,
                   refine_options: Mapping[str, Any] | None = None,
                   registries: Registries | None = None) -> UniverseMerge:
    """Align ``models`` to their universe (optionally refined on ``dataset``) and merge them.

    ``spec``: a Spec, a spec name, or None (found from the first model). ``weights``: the merge
    weights (default equal; normalised by the merger). ``universe_options`` go to
    :func:`symdsl.match.universe.universe_match` (``max_iter``, ``tol``, weight-matching options),
    ``refine_options`` to :func:`symdsl.learn.universe_refine.refine_universe` (``alpha``,
    ``steps``, ``lr`` ...). ``surface_path`` (three models, needs ``dataset``): a PNG of the
    simplex surfaces at ``resolution`` on ``split``, and their JSON at the same path with ``.json``.

    >>> import torch
    >>> from symdsl.spec import load_spec_text
    >>> spec = load_spec_text('symdsl: 1\\nname: mlp\\nsites: {u: {group: permutation, size: 8}}\\n'
    ...                       'tensors: {0.weight: "u _", 0.bias: u, 2.weight: "_ u\\'"}\\ninvariant: [2.bias]\\n')
    >>> models = [torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)) for _ in range(3)]
    >>> out = merge_universe(models, spec)
    >>> type(out.model).__name__, len(out.universe.elements)
    ('Sequential', 3)
    """
    registries = registries or default_registries()
    chosen_merger = registries.mergers.lookup(merger)
    if (refine or surface_path is not None) and dataset is None:
        raise UsageError("universe refinement and simplex surfaces evaluate the task loss: pass a dataset "
                         "(--data DATA; Python: dataset='digits' or a symdsl.data.Dataset)")
    if surface_path is not None and len(models) != 3:
        raise UsageError(f"simplex surfaces are drawn for three models, got {len(models)}; drop surface_path")
    dataset = dataset_for(dataset, registries)
    started = time.perf_counter()
    prepared = prepare(models, spec, device=device, registries=registries)
    resolved, states, template = prepared.resolved, prepared.states, prepared.models[0]
    universe = universe_match(resolved, states, matcher=registries.matchers.lookup("weight"), progress=progress,
                              seed=seed, **dict(universe_options or {}))
    info: dict[str, Any] = {"spec": prepared.spec.name, "models": len(models), "weights": weights,
                            "universe_seconds": time.perf_counter() - started}
    refined = None
    if refine:
        begun = time.perf_counter()
        refined = refine_universe(template, resolved, states, universe.elements, dataset, seed=seed,
                                  progress=progress, **dict(refine_options or {}))
        info["refine_seconds"] = time.perf_counter() - begun
    chosen = refined or universe
    aligned = chosen.aligned(resolved, states)
    surfaces = {}
    if surface_path is not None:
        surfaces = _surfaces(template, resolved, states, universe, refined, dataset, Path(surface_path),
                             resolution=resolution, split=split, progress=progress)
        info["surface_png"] = str(surface_path)
        info["surface_json"] = str(Path(surface_path).with_suffix(".json"))
    merged_state = chosen_merger.merge(aligned, weights)
    template.load_state_dict(merged_state)
    return UniverseMerge(template, universe, refined, surfaces, info)


def _surfaces(template, resolved, states, universe, refined, dataset, path: Path, *, resolution, split, progress):
    from ..evaluate.simplex import simplex_surface, surfaces_record
    from ..evaluate.simplex_plot import plot_simplex
    from ..evaluate.record import save_json

    runs = {"vanilla": list(states), "universe": universe.aligned(resolved, states)}
    if refined is not None:
        runs["refined"] = refined.aligned(resolved, states)
    surfaces = {}
    for key, aligned in runs.items():
        report = None if progress is None else (lambda done, total, key=key: progress(f"surface {key}", done, total))
        surfaces[SURFACE_LABELS[key]] = simplex_surface(template, aligned, dataset, resolution=resolution, split=split,
                                                        labels=["model 0", "model 1", "model 2"], progress=report)
    path.parent.mkdir(parents=True, exist_ok=True)
    plot_simplex(surfaces, path)
    save_json(surfaces_record(surfaces, info={"resolution": resolution, "split": split, "dataset": dataset.name}),
              path.with_suffix(".json"))
    return surfaces
