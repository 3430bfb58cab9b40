"""Built-in mergers: linear interpolation of two aligned models, weighted average of N."""
from __future__ import annotations

from symdsl.errors import UsageError
from symdsl.evaluate.interpolate import weighted_average
from symdsl.merge.base import Merger


class WeightedAverage(Merger):
    """Weighted average of N aligned models (equal weights by default, normalised to sum to 1)."""

    name = "average"
    description = "weighted average of N aligned state dicts (equal weights by default)"

    def merge(self, states, weights=None, **options):
        if options:
            raise UsageError(f"average takes no options, got {sorted(options)}")
        if not states:
            raise UsageError("nothing to merge")
        if weights is not None:
            if len(weights) != len(states):
                raise UsageError(f"{len(weights)} weights for {len(states)} models")
            total = sum(float(w) for w in weights)
            if abs(total) < 1e-12:
                raise UsageError("weights sum to zero")
            weights = [float(w) / total for w in weights]
        return weighted_average(states, weights, names=[f"model {i}" for i in range(len(states))])


class Interpolate(Merger):
    """lam * A + (1 - lam) * B for two aligned models (lam = 1 gives A)."""

    name = "interpolate"
    description = "linear interpolation lam*A + (1-lam)*B of two aligned state dicts"

    def merge(self, states, weights=None, *, lam: float = 0.5, **options):
        if len(states) != 2:
            raise UsageError(f"interpolate merges exactly two models, got {len(states)}")
        return WeightedAverage().merge(states, [lam, 1.0 - lam], **options)


BUILTIN_MERGERS = (WeightedAverage, Interpolate)
