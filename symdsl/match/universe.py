"""Universe matching: bring N >= 2 models into one common frame, the "universe" (their mean).

Each model i gets its own transform g_i; the universe is U = mean_i act(g_i, theta_i). The
algorithm is block coordinate descent on

    J(g_1, ..., g_{N-1}) = sum_i ||U - act(g_i, theta_i)||^2  =  (1/N) sum_{i<j} ||a_i - a_j||^2

(a_i = act(g_i, theta_i); the identity on the right is the variance of N points). With every
other model fixed, the terms of J that move with g_i are  (N-1)/N * ||U_{-i} - a_i||^2  plus a
constant, where U_{-i} is the mean of the *other* aligned models. So each step runs pairwise
weight matching of model i onto its leave-one-out universe, and J never goes up.

- Gauge: model 0 is never moved (g_0 = identity), so the universe and the merged model live
  in model 0's frame and stay directly comparable with it. A transform applied to all N models
  at once changes neither the merged function nor, for permutations and rotations, J.
- Start: the running universe. Model 1 is matched to model 0, model 2 to the mean of the two
  aligned models, and so on.
- Sweeps: model i (1 .. N-1, in order) is matched onto U_{-i} starting from its current
  alignment (weight matching runs on a_i and its result h is composed, g_i <- h o g_i); the step
  is kept only if it lowers ||U_{-i} - a_i||^2. After a sweep J is recorded; the loop stops
  when a sweep improves J by less than ``tol`` (relative) or after ``max_iter`` sweeps.
- Determinism: a fixed order, float64 throughout, and weight matching is deterministic.

>>> import torch
>>> from symdsl.act import act_state_dict, random_transform
>>> from symdsl.plugins import load
>>> from symdsl.spec import load_spec_text, resolve
>>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)).double()
>>> spec = load_spec_text('symdsl: 1\\nname: m\\nsites: {u: {group: permutation, size: 4}}\\n'
...                       'tensors: {0.weight: "u _", 0.bias: u, 2.weight: "_ u\\'"}\\ninvariant: [2.bias]\\n')
>>> r = resolve(spec, model, registries=load())
>>> theta = model.state_dict()
>>> states = [act_state_dict(r, theta, random_transform(r, seed=s)) for s in range(3)]
>>> result = universe_match(r, states, matcher=load().matchers["weight"])
>>> result.objective[-1] < 1e-20            # every copy found in one common frame
True
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from ..act import act_state_dict, identity_transform
from ..errors import UsageError
from ..spec.binding import ResolvedSpec
from .base import Matcher

State = Mapping[str, torch.Tensor]
Transform = dict[str, torch.Tensor]


@dataclass
class UniverseResult:
    """One transform per model (``elements[i]`` brings model i into the universe; model 0's is the
    identity unless a refinement says otherwise), the objective per iteration (lower is better)
    and how it was found."""

    elements: list[Transform]
    objective: list[float] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def aligned(self, resolved: ResolvedSpec, states: Sequence[State]) -> list[dict[str, torch.Tensor]]:
        """Every model's state dict moved into the universe (dtypes and devices kept)."""
        return [act_state_dict(resolved, s, g) for s, g in zip(states, self.elements)]

    def to_record(self) -> dict[str, Any]:
        """A JSON-serialisable summary (elements are stored separately)."""
        return {"objective": self.objective, "info": self.info}


def compose_transforms(resolved: ResolvedSpec, outer: Mapping[str, torch.Tensor],
                       inner: Mapping[str, torch.Tensor]) -> Transform:
    """The transform c with ``act(c, x) == act(outer, act(inner, x))`` (inner first).

    Plain sites compose as group elements. A site declared ``per`` a permutation site (a per-head
    map under a head permutation) acts as ``y[a] = G[a] x[perm[a]]``, so two of them compose as
    ``C[b] = G_outer[b] @ G_inner[perm_outer[b]]``: the inner maps follow the outer permutation.
    A site missing from one side is the identity there.

    >>> import torch
    >>> from symdsl.plugins import load
>>> from symdsl.spec import load_spec_text, resolve
    >>> spec = load_spec_text('symdsl: 1\\nname: t\\nsites: {h: {group: permutation, size: 3}}\\n'
    ...                       'tensors: {weight: "h _", bias: h}\\n')
    >>> r = resolve(spec, torch.nn.Linear(2, 3), registries=load())
    >>> compose_transforms(r, {"h": torch.tensor([1, 2, 0])}, {"h": torch.tensor([1, 2, 0])})["h"]
    tensor([2, 0, 1])
    """
    out: Transform = {}
    for name, site in resolved.sites.items():
        if name not in outer or name not in inner:
            if name in outer or name in inner:
                out[name] = (outer if name in outer else inner)[name]
            continue
        a, b = outer[name], inner[name]
        if b.is_floating_point():
            b = b.to(device=a.device, dtype=a.dtype if a.is_floating_point() else b.dtype)
        else:
            b = b.to(a.device)
        parent = resolved.sites.get(site.per) if site.per is not None else None
        if parent is not None and parent.name in outer:
            perm = outer[parent.name]
            if perm.is_floating_point() or perm.dim() != 1 or b.shape[0] != perm.shape[0]:
                raise UsageError(f"site '{name}' is per '{parent.name}' (group {parent.kind.name}); composing its "
                                 "elements needs the parent to be a permutation over its leading batch axis")
            b = b.index_select(0, perm.long().to(b.device))   # inner map of the head now at each position
        out[name] = site.kind.compose(a, b)
    return out


def _distance2(x: State, y: State, names: Sequence[str]) -> float:
    return float(sum(((x[n] - y[n]) ** 2).sum() for n in names))


def _mean(states: Sequence[State], names: Sequence[str]) -> dict[str, torch.Tensor]:
    return {n: torch.stack([s[n] for s in states]).mean(dim=0) for n in names}


def universe_objective(aligned: Sequence[State], names: Sequence[str]) -> float:
    """``sum_i ||U - a_i||^2`` over the tensors ``names``, with U the mean of ``aligned``.

    >>> import torch
    >>> universe_objective([{"w": torch.tensor([0.0])}, {"w": torch.tensor([2.0])}], ["w"])
    2.0
    """
    universe = _mean(aligned, names)
    return sum(_distance2(universe, a, names) for a in aligned)


def universe_match(resolved: ResolvedSpec, states: Sequence[State], *, matcher: Matcher, max_iter: int = 10,
                   tol: float = 1e-3,
                   progress: Callable[[str, int, int], None] | None = None, seed: int = 0,
                   weight_max_iter: int | None = None, weight_tol: float | None = None,
                   **weight_options) -> UniverseResult:
    """Align N models to their common universe by weight matching (see the module docstring).

    ``states`` are canonical state dicts of one architecture (after :func:`symdsl.api.pipeline.prepare`);
    ``matcher`` is the pairwise weight matcher (``registries.matchers["weight"]``).
    ``max_iter``/``tol`` bound the universe sweeps; ``weight_max_iter``/``weight_tol`` and the
    other keyword arguments (``invertible_steps``, ``permutations_only``, ``device``) go to each
    pairwise weight matching. ``progress(phase, done, total)`` is called after each matching.
    ``info`` holds per-step records, the sweeps run and the final pairwise relative distances.
    """
    if len(states) < 2:
        raise UsageError(f"universe matching needs at least two models, got {len(states)}")
    if max_iter < 0 or tol < 0:
        raise UsageError(f"universe matching needs max_iter >= 0 and tol >= 0, got {max_iter} and {tol}")
    options = dict(weight_options)
    if weight_max_iter is not None:
        options["max_iter"] = int(weight_max_iter)
    if weight_tol is not None:
        options["tol"] = float(weight_tol)
    names = list(resolved.tensors)
    missing = [(i, n) for i, s in enumerate(states) for n in names if n not in s]
    if missing:
        raise UsageError(f"model {missing[0][0]} has no tensor '{missing[0][1]}' that spec '{resolved.spec.name}' "
                         "binds; pass canonical state dicts of the spec's architecture (symdsl.api.pipeline.prepare)")
    device = options.get("device") or states[0][names[0]].device
    # float64 copies of the bound tensors: the objective and the universe are formed exactly
    work = [{n: s[n].detach().to(device=device, dtype=torch.float64) for n in names} for s in states]
    n_models = len(work)
    elements = [identity_transform(resolved, device=device) for _ in work]
    aligned: list[dict[str, torch.Tensor]] = [work[0]]
    total = (n_models - 1) * (1 + max_iter)
    done = 0
    steps: list[dict[str, Any]] = []

    def step(i: int, target: State, current: State) -> tuple[Transform, float, float]:
        nonlocal done
        result = matcher.match(resolved, target, current, seed=seed, **options)
        done += 1
        if progress is not None:
            progress("universe matching", done, total)
        return result.elements, result.objective[0], result.objective[-1]

    # start: the running universe (mean of the models aligned so far)
    for i in range(1, n_models):
        g, before, after = step(i, _mean(aligned, names), work[i])
        elements[i] = g
        aligned.append(act_state_dict(resolved, work[i], g))
        steps.append({"phase": "start", "model": i, "before": before, "after": after})
    history = [universe_objective(aligned, names)]
    # J at the rounding level of the weights: every model already sits in one frame
    exact = 1e-24 * sum(_distance2(a, {n: torch.zeros_like(a[n]) for n in names}, names) for a in aligned)
    sweeps, stopped = 0, "max_iter"
    for sweep in range(max_iter if history[0] > exact else 0):
        for i in range(1, n_models):
            others = [a for j, a in enumerate(aligned) if j != i]
            h, before, after = step(i, _mean(others, names), aligned[i])
            kept = after < before
            if kept:
                elements[i] = compose_transforms(resolved, h, elements[i])
                aligned[i] = act_state_dict(resolved, work[i], elements[i])
            steps.append({"phase": f"sweep {sweep + 1}", "model": i, "before": before, "after": after, "kept": kept})
        sweeps += 1
        history.append(universe_objective(aligned, names))
        if history[-2] - history[-1] <= tol * max(history[-2], 1e-300):
            stopped = "converged"
            break
    if history[-1] <= exact:
        stopped = "exact"
    elif max_iter == 0:
        stopped = "start only"
    info = {"models": n_models, "sweeps": sweeps, "stopped": stopped, "gauge": "model 0",
            "relative_distance": pairwise_relative_distances(aligned, names), "steps": steps,
            "weight_options": {k: v for k, v in options.items() if k != "device"}}
    return UniverseResult(elements, history, info)


def pairwise_relative_distances(aligned: Sequence[State], names: Sequence[str]) -> list[list[float]]:
    """``d[i][j] = ||a_i - a_j|| / sqrt((||a_i||^2 + ||a_j||^2) / 2)`` over ``names`` (0 on the diagonal).

    >>> import torch
    >>> pairwise_relative_distances([{"w": torch.tensor([1.0])}, {"w": torch.tensor([-1.0])}], ["w"])
    [[0.0, 2.0], [2.0, 0.0]]
    """
    norms = [_distance2(a, {n: torch.zeros_like(a[n]) for n in names}, names) for a in aligned]
    out = [[0.0] * len(aligned) for _ in aligned]
    for i in range(len(aligned)):
        for j in range(i + 1, len(aligned)):
            scale = max(0.5 * (norms[i] + norms[j]), 1e-300)
            out[i][j] = out[j][i] = (_distance2(aligned[i], aligned[j], names) / scale) ** 0.5
    return out
