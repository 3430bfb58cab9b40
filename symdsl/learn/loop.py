"""Train the transforms of one or more endpoint models on the task loss along the path.

The loop behind learned matching (two models, lambda ~ U(0.1, 0.9)) and universe refinement
(N models, weights ~ Dirichlet(0.1 * 1)). Every ``eval_every`` steps the *validation
objective* (the barrier on the validation batches, over the sampler's fixed validation points:
:func:`validation_objective`) is measured; the best transforms seen, the starting point
included, are returned.
Under ``torchrun`` (:mod:`symdsl.distributed`) every rank draws the same weights and batches,
trains on its own shard of each batch and sums the group parameters' gradients with the others;
validation losses are summed over ranks, so every rank takes the same steps and keeps the same
transforms (rank 0's are broadcast at the end all the same).
So the result is never worse than its start on that objective, and training stops early once
it has not improved for ``patience`` evaluations.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from .. import distributed
from ..data import Dataset
from .schedule import lr_multiplier
from .objective import PathLoss
from ..groups.parametrizations import Parametrization
from ..match.base import report

Params = Mapping[str, Parametrization]


@dataclass
class LearnResult:
    """The best elements per endpoint (None where an endpoint was fixed) and the run's history."""

    elements: list[dict[str, torch.Tensor] | None]
    history: list[dict[str, float]] = field(default_factory=list)   # {"step", "validation", "train"}
    info: dict[str, Any] = field(default_factory=dict)


def _elements(params: Sequence[Params | None]) -> list[dict[str, torch.Tensor] | None]:
    return [None if p is None else {site: q.element() for site, q in p.items()} for p in params]


def _pairs(params: Sequence[Params | None]):
    return [None if p is None else {site: q.dense() for site, q in p.items()} for p in params]


def validation_objective(path: PathLoss, params: Sequence[Params | None], sampler, batches) -> float:
    """The barrier on the validation batches: max over the sampler's validation points w of
    L(w) - sum_i w_i L(e_i), with L the mean loss over ``batches`` and e_i the endpoints.

    The same definition as the reported barrier (paper's, the line between the endpoints'
    losses; over the simplex for N models), so early stopping and keep-best select what the
    barrier measures. Endpoint losses are measured with the current transforms too (they do not
    change them: each endpoint moves by a symmetry).
    """
    pairs = _pairs(params)

    def mean_loss(weights) -> float:
        # sums over this rank's batches (its shards, in a job of several processes), reduced over the
        # ranks and divided once: the mean over every example the job holds
        total, count = 0.0, 0
        for inputs, targets in batches:
            if targets.numel():
                total += float(path.loss(weights, pairs, inputs, targets)) * targets.numel()
                count += targets.numel()
        total, count = distributed.reduce_sums([total, count])
        return total / max(count, 1)

    with torch.no_grad():
        n = len(params)
        ends = [mean_loss([1.0 if j == i else 0.0 for j in range(n)]) for i in range(n)]
        return max(mean_loss(w) - sum(wi * li for wi, li in zip(w, ends)) for w in sampler.validation_points())


def learn_transforms(path: PathLoss, params: Sequence[Params | None], sampler, data: Dataset, *, steps: int = 300,
                     lr: float = 1e-2, batch_size: int = 64, eval_every: int = 25, patience: int = 6,
                     validation_batches: int = 4, schedule: str = "cosine", seed: int = 0, device=None, dtype=None,
                     progress: Callable[[str, int, int], None] | None = None) -> LearnResult:
    """Adam on the parameters of ``params`` (one mapping site -> Parametrization per endpoint).

    Each parametrisation's parameters use ``lr * lr_scale`` (straight-through permutation
    scores move 10x faster than rotation generators and invertible maps).

    ``schedule`` (``"cosine"`` to zero, or ``"constant"``) scales ``lr`` over ``steps``.
    ``data``'s ``train`` split feeds the steps and its ``test`` split is the validation split
    (use :func:`symdsl.data.holdout.with_validation` so the real test split is never seen).
    In a job of several processes each rank trains and validates on its shard of every batch
    (``batch_size`` is the whole job's batch); only rank 0 reports ``progress``.
    """
    if not distributed.is_main():
        progress = None
    groups: dict[float, list] = {}
    for p in params:
        for q in (p or {}).values():
            groups.setdefault(float(getattr(q, "lr_scale", 1.0)), []).extend(q.parameters())
    trainable = [{"params": ts, "lr": lr * scale} for scale, ts in groups.items() if ts]
    generator = torch.Generator().manual_seed(seed)
    cast = (lambda x: x.to(device=device, dtype=dtype) if x.is_floating_point() else x.to(device=device))
    val = [(distributed.shard(cast(x)), distributed.shard(y.to(device)))
           for i, (x, y) in enumerate(data.batches("test", batch_size)) if i < validation_batches]
    weights_of = [t for group in trainable for t in group["params"]]
    start = time.perf_counter()
    best_value = validation_objective(path, params, sampler, val)
    best = _elements(params)
    history = [{"step": 0, "validation": best_value, "train": float("nan")}]
    if not trainable or steps <= 0:
        return LearnResult(best, history, {"steps": 0, "stopped": "nothing to train", "seconds": 0.0})
    optimizer = torch.optim.Adam(trainable)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(schedule, steps))
    since_best, recent, step, stopped = 0, [], 0, "steps"
    stream = _endless(data, batch_size, seed)
    while step < steps:
        inputs, whole = next(stream)
        # this rank's rows; the same batch and weights are drawn on every rank
        inputs, targets = distributed.shard(cast(inputs)), distributed.shard(whole.to(device))
        weights = sampler.draw(generator)
        optimizer.zero_grad(set_to_none=True)
        local = 0.0
        if targets.numel():      # a batch smaller than the job leaves some ranks without rows
            loss = path.loss(weights, _pairs(params), inputs, targets)
            # weighted by the shard's share: the ranks' gradients sum to the whole batch's mean gradient
            (loss * distributed.share(whole, targets)).backward()
            local = float(loss.detach()) * targets.numel()
        distributed.all_reduce_gradients(weights_of)
        total, count = distributed.reduce_sums([local, targets.numel()])
        optimizer.step()
        scheduler.step()
        for p in params:
            for q in (p or {}).values():
                q.project()
        recent.append(total / max(count, 1))
        step += 1
        report(progress, "learned matching", step, steps, loss=sum(recent) / len(recent), best_validation=best_value)
        if step % eval_every == 0 or step == steps:
            value = validation_objective(path, params, sampler, val)
            history.append({"step": step, "validation": value, "train": sum(recent) / len(recent)})
            recent = []
            if value < best_value:
                best_value, best, since_best = value, _elements(params), 0
            else:
                since_best += 1
                if since_best >= patience:
                    stopped = "early stop"
                    break
    # every rank holds the same elements already (same gradients, same decisions); rank 0's are
    # taken so that float differences between devices cannot leave the ranks with different transforms
    best = [None if b is None else distributed.broadcast_tensors(b) for b in best]
    # the true total (early stopping ends before ``steps``), with the value kept
    report(progress, "learned matching", step, step, best_validation=best_value)
    info = {"steps": step, "stopped": stopped, "seconds": time.perf_counter() - start,
            "start_validation": history[0]["validation"], "best_validation": best_value}
    return LearnResult(best, history, info)


def _endless(data: Dataset, batch_size: int, seed: int):
    epoch = 0
    drop = len(data.train) >= batch_size
    while True:
        yield from data.batches("train", batch_size, shuffle=True, seed=seed * 7919 + epoch, drop_last=drop)
        epoch += 1
