"""Built-in mergers: linear interpolation of two aligned models, weighted average of N."""
from __future__ import annotations

import math

from pydantic import Field

from symdsl.errors import UsageError
from symdsl.evaluate.interpolate import weighted_average
from symdsl.merge.base import Merger
from symdsl.options import PluginOptions


class NoOptions(PluginOptions):
    """A merger that takes no options."""


class InterpolateOptions(PluginOptions):
    """Interpolation's options."""

    lam: float = Field(0.5, description="weight of the first model A (1 gives A, 0 gives B; outside [0, 1] "
                       "extrapolates)")


class WeightedAverage(Merger):
    """Weighted average of N aligned models (equal weights by default, normalised to sum to 1)."""

    name = "average"
    description = "weighted average of N aligned state dicts (equal weights by default)"

    Options = NoOptions

    def merge(self, states, weights=None, **options):
        NoOptions.parse(options, "merger 'average'")
        if not states:
            raise UsageError("nothing to merge")
        if weights is not None:
            if len(weights) != len(states):
                raise UsageError(f"{len(weights)} weights for {len(states)} models")
            if not all(math.isfinite(float(w)) for w in weights):
                raise UsageError(f"merge weights must be finite numbers, got {list(weights)}")
            total = sum(float(w) for w in weights)
            if abs(total) < 1e-12:
                raise UsageError("weights sum to zero")
            weights = [float(w) / total for w in weights]
        return weighted_average(states, weights, names=[f"model {i}" for i in range(len(states))])


class Interpolate(Merger):
    """lam * A + (1 - lam) * B for two aligned models (lam = 1 gives A)."""

    name = "interpolate"
    description = "linear interpolation lam*A + (1-lam)*B of two aligned state dicts"

    Options = InterpolateOptions

    def merge(self, states, weights=None, **options):
        lam = InterpolateOptions.parse(options, "merger 'interpolate'").lam
        if len(states) != 2:
            raise UsageError(f"interpolate merges exactly two models, got {len(states)}")
        return WeightedAverage().merge(states, [lam, 1.0 - lam])


BUILTIN_MERGERS = (WeightedAverage, Interpolate)
