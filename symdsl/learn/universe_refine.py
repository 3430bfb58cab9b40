"""Learned refinement of a universe alignment: train the N transforms on the task loss of their mixtures.

Starting from universe matching's transforms g_i, the model sum_i w_i act(g_i, theta_i) is trained
with w ~ Dirichlet(alpha * 1) (the paper: alpha = 0.1, so most draws sit near a vertex or an
edge and the whole simplex is covered), through :func:`symdsl.learn.loop.learn_transforms`.

- Every endpoint is first moved by its starting transform; each site's trainable element h_i
  starts at the identity and the result is h_i o g_i (:func:`symdsl.match.universe.compose_transforms`).
  So sites that are frozen, or not learnable (``permutations_only`` leaves invertible maps alone),
  keep their universe element instead of falling back to the identity.
- Model 0 stays fixed (the universe's gauge): a transform applied to all N models at once changes
  no mixture's function, since the action is linear in the weights, so fixing one endpoint loses
  nothing and removes a redundant direction.
- A validation split is held out of the train split (:func:`symdsl.data.holdout.with_validation`);
  the loop keeps the best validation objective seen, the start included, so the refinement never
  ends worse than its start on that objective.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch

from ..act import act_state_dict, identity_transform
from ..data import Dataset, load_dataset
from ..errors import UsageError
from ..match.base import renamed
from ..match.universe import UniverseResult, compose_transforms
from ..spec.binding import ResolvedSpec

DEFAULTS = {"steps": 1000, "lr": 0.003, "schedule": "cosine", "batch_size": 64, "eval_every": 25, "patience": 20,
            "validation": 0.1, "validation_batches": 4}


def refine_universe(model: torch.nn.Module, resolved: ResolvedSpec, states: Sequence[Mapping[str, torch.Tensor]],
                    start_elements: Sequence[Mapping[str, torch.Tensor]], dataset: Dataset | str, *,
                    alpha: float = 0.1, seed: int = 0, freeze: Sequence[str] = (), permutations_only: bool = False,
                    device=None, progress: Callable[[str, int, int], None] | None = None,
                    **options) -> UniverseResult:
    """Train the transforms of models 1 .. N-1 jointly; returns their refined transforms.

    ``model`` is a template of the architecture (any of the canonical models: its own weights are
    not used); ``states`` are the N canonical state dicts and ``start_elements`` their transforms
    into the universe (:func:`symdsl.match.universe.universe_match`). Options (defaults in
    :data:`DEFAULTS`): ``steps``, ``lr``, ``schedule``, ``batch_size``, ``eval_every``, ``patience``,
    ``validation`` (the held-out fraction of the train split), ``validation_batches``.
    ``objective`` of the result is the validation objective at each evaluation.

    >>> from symdsl.plugins import load
    >>> import torch
    >>> from symdsl.match.universe import universe_match
    >>> from symdsl.spec import load_spec_text, resolve
    >>> spec = load_spec_text('symdsl: 1\\nname: mlp\\nsites: {u: {group: permutation, size: 8}}\\n'
    ...                       'tensors: {1.weight: "u _", 1.bias: u, 3.weight: "_ u\\'"}\\ninvariant: [3.bias]\\n')
    >>> def mlp(seed):
    ...     torch.manual_seed(seed)
    ...     return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 8), torch.nn.ReLU(), torch.nn.Linear(8, 10))
    >>> models = [mlp(s) for s in range(3)]
    >>> r = resolve(spec, models[0], registries=load())
    >>> states = [m.state_dict() for m in models]
    >>> start = universe_match(r, states, matcher=load().matchers["weight"]).elements
    >>> refined = refine_universe(models[0], r, states, start, "digits", steps=4, eval_every=2)
    >>> len(refined.elements), refined.info["best_validation"] <= refined.info["start_validation"]
    (3, True)
    """
    from ..data.holdout import with_validation
    from .loop import learn_transforms
    from .objective import PathLoss
    from .parametrize import parametrize_sites, trained_sites
    from .samplers import parse_sampler

    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise UsageError(f"universe refinement has no option(s) {unknown}; options: "
                         f"{', '.join(sorted([*DEFAULTS, 'alpha', 'freeze', 'permutations_only', 'device']))}")
    if len(states) < 2 or len(start_elements) != len(states):
        raise UsageError(f"universe refinement needs N >= 2 models and one starting transform each; got "
                         f"{len(states)} models and {len(start_elements)} transforms")
    for i, start in enumerate(start_elements):
        missing = [s for s in resolved.sites if s not in start]
        if missing:
            raise UsageError(f"the starting transform of model {i} has no element for site(s) {missing[:5]}; "
                             "pass universe_match(...).elements")
    unknown_sites = sorted(set(freeze) - set(resolved.sites))
    if unknown_sites:
        raise UsageError(f"freeze names site(s) {unknown_sites[:5]} that spec '{resolved.spec.name}' does not have")
    settings = {**DEFAULTS, **options}
    dataset = load_dataset(dataset)
    dtype = next(model.parameters()).dtype
    device = device or next(model.parameters()).device
    # endpoints moved by their universe transforms; every trainable element starts at the identity
    moved = [{k: v.to(device) for k, v in act_state_dict(resolved, s, g).items()} for s, g in zip(states, start_elements)]
    identity = identity_transform(resolved, device=device)
    params = [None] + [parametrize_sites(resolved, identity, permutations_only=permutations_only, dtype=dtype,
                                         device=device, freeze=set(freeze)) for _ in states[1:]]
    path = PathLoss(model, resolved, moved, dataset.task)
    sampler = parse_sampler(f"dirichlet:{float(alpha)!r}", len(states))
    fit_data = with_validation(dataset, float(settings["validation"]))
    result = learn_transforms(path, params, sampler, fit_data, steps=int(settings["steps"]), lr=float(settings["lr"]),
                              batch_size=int(settings["batch_size"]), eval_every=int(settings["eval_every"]),
                              patience=int(settings["patience"]), schedule=str(settings["schedule"]),
                              validation_batches=int(settings["validation_batches"]), seed=seed, device=device,
                              dtype=dtype, progress=_renamed(progress))
    elements = [dict(start_elements[0])]
    for learned, start in zip(result.elements[1:], start_elements[1:]):
        learned = {site: g.to(torch.float64) if g.is_floating_point() else g for site, g in learned.items()}
        elements.append(compose_transforms(resolved, learned, start))
    info = {**result.info, "history": result.history, "alpha": float(alpha), "sampler": sampler.describe(),
            "validation_points": sampler.validation_points(), "permutations_only": permutations_only,
            "learned_sites": trained_sites(params[1]), "fixed": [0], "settings": settings}
    return UniverseResult(elements, [h["validation"] for h in result.history], info)


def _renamed(progress):
    return renamed(progress, "universe refinement")
