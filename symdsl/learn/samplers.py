"""Where on the path (or simplex) learned matching evaluates the task loss: weight samplers.

A sampler draws the mixing weights of the endpoint models for one training step and names the
fixed points where the validation objective (the barrier on the validation split, see
:func:`symdsl.learn.loop.validation_objective`) is measured. Written as ``uniform:LO,HI`` (two models:
lambda, the weight of model A, uniform in [LO, HI]; the paper's choice is ``uniform:0.4,0.6``)
or ``dirichlet:ALPHA`` (N models: weights ~ Dirichlet(ALPHA * 1); the paper's refinement uses 0.1).

>>> s = parse_sampler("uniform:0.4,0.6", 2)
>>> w = s.draw(torch.Generator().manual_seed(0))
>>> len(w), abs(sum(w) - 1) < 1e-12, 0.4 <= w[0] <= 0.6
(2, True, True)
>>> s.validation_points()[:3]
[[0.1, 0.9], [0.2, 0.8], [0.3, 0.7]]
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UsageError


@dataclass(frozen=True)
class UniformLambda:
    """Two models: weights ``[lam, 1 - lam]`` with lam ~ U(low, high) (lam is model A's weight);
    validated at lam = 0.1, 0.2, ..., 0.9 whatever the training range."""

    low: float = 0.4
    high: float = 0.6

    def draw(self, generator: torch.Generator) -> list[float]:
        lam = self.low + (self.high - self.low) * float(torch.rand((), generator=generator, dtype=torch.float64))
        return [lam, 1.0 - lam]

    def validation_points(self) -> list[list[float]]:
        # the whole path, not only the training range: the barrier is a maximum over all of it,
        # and a path trained on [0.4, 0.6] alone was seen to bulge at 0.2-0.3 (digit ViTs)
        return [[round(p / 10, 12), round(1.0 - p / 10, 12)] for p in range(1, 10)]

    def describe(self) -> str:
        return f"uniform:{self.low:g},{self.high:g}"


@dataclass(frozen=True)
class DirichletWeights:
    """N models: weights ~ Dirichlet(alpha * 1); validated on the centroid, the edge midpoints and
    N fixed interior draws."""

    alpha: float
    n: int

    def draw(self, generator: torch.Generator) -> list[float]:
        # Gamma(alpha) draws normalised are Dirichlet(alpha); torch's Gamma has no generator
        # argument, so draw through numpy seeded from the torch generator.
        import numpy as np

        rng = np.random.default_rng(int(torch.randint(0, 2 ** 31 - 1, (), generator=generator)))
        w = rng.dirichlet([self.alpha] * self.n)
        return [float(x) for x in w]

    def validation_points(self) -> list[list[float]]:
        import numpy as np

        rng = np.random.default_rng(12345)
        points = [[1.0 / self.n] * self.n]
        points += [[0.5 if k in (i, j) else 0.0 for k in range(self.n)]
                   for i in range(self.n) for j in range(i + 1, self.n)]
        points += [[float(x) for x in rng.dirichlet([max(self.alpha, 1.0)] * self.n)] for _ in range(self.n)]
        return points

    def describe(self) -> str:
        return f"dirichlet:{self.alpha:g}"


def parse_sampler(text: str, n_models: int):
    """A sampler from its written form; an error names the form and the fix."""
    kind, _, args = str(text).partition(":")
    try:
        if kind == "uniform":
            if n_models != 2:
                raise UsageError(f"sampler '{text}' mixes two models, not {n_models}; use dirichlet:ALPHA")
            low, high = (float(v) for v in args.split(","))
            if not 0.0 <= low <= high <= 1.0:
                raise UsageError(f"sampler '{text}': need 0 <= LO <= HI <= 1")
            return UniformLambda(low, high)
        if kind == "dirichlet":
            alpha = float(args)
            if alpha <= 0:
                raise UsageError(f"sampler '{text}': ALPHA must be positive")
            return DirichletWeights(alpha, n_models)
    except ValueError:
        pass
    raise UsageError(f"cannot read sampler '{text}'; write uniform:LO,HI (two models, e.g. uniform:0.4,0.6) "
                     "or dirichlet:ALPHA (e.g. dirichlet:0.1)")
