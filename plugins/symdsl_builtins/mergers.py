"""Built-in mergers: linear interpolation of two aligned models, weighted average of N."""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

from symdsl.errors import UsageError
from symdsl.merge.base import Merger


def _check_keys(states: Sequence[Mapping[str, torch.Tensor]]) -> None:
    first = states[0]
    for index, other in enumerate(states[1:], start=1):
        if set(other) != set(first):
            missing = sorted(set(first) ^ set(other))[:3]
            raise UsageError(f"model {index} has different tensors from model 0: {missing}")
        for name, tensor in first.items():
            if other[name].shape != tensor.shape:
                raise UsageError(f"'{name}' has shape {tuple(other[name].shape)} in model {index} but "
                                 f"{tuple(tensor.shape)} in model 0")


class WeightedAverage(Merger):
    """Weighted average of N aligned models (equal weights by default); non-float tensors from the first."""

    name = "average"
    description = "weighted average of N aligned state dicts (equal weights by default)"

    def merge(self, states, weights=None, **options):
        if options:
            raise TypeError(f"average takes no options, got {sorted(options)}")
        if not states:
            raise UsageError("nothing to merge")
        _check_keys(states)
        weights = [1.0 / len(states)] * len(states) if weights is None else [float(w) for w in weights]
        if len(weights) != len(states):
            raise UsageError(f"{len(weights)} weights for {len(states)} models")
        total = sum(weights)
        if abs(total) < 1e-12:
            raise UsageError("weights sum to zero")
        weights = [w / total for w in weights]
        out = {}
        for name, tensor in states[0].items():
            if not tensor.is_floating_point():
                out[name] = tensor.clone()
                continue
            acc = torch.zeros_like(tensor, dtype=torch.float64)
            for w, state in zip(weights, states):
                acc += w * state[name].to(torch.float64)
            out[name] = acc.to(tensor.dtype)
        return out


class Interpolate(Merger):
    """lam * A + (1 - lam) * B for two aligned models (lam = 1 gives A)."""

    name = "interpolate"
    description = "linear interpolation lam*A + (1-lam)*B of two aligned state dicts"

    def merge(self, states, weights=None, *, lam: float = 0.5, **options):
        if len(states) != 2:
            raise UsageError(f"interpolate merges exactly two models, got {len(states)}")
        return WeightedAverage().merge(states, [lam, 1.0 - lam], **options)


BUILTIN_MERGERS = (WeightedAverage, Interpolate)
