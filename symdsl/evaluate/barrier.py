"""Loss and accuracy barriers of a curve: how far the path rises above (or accuracy dips below) its ends."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..errors import UsageError, suggest
from .curve import Curve

DEFINITIONS = ("linear", "mean")


@dataclass(frozen=True)
class Barrier:
    """Barriers of one curve: ``loss`` (>= 0 on a grid with both ends) and ``accuracy`` (in
    accuracy units, positive when accuracy dips), the lambdas where each maximum is reached,
    and which ``definition`` produced them.

    >>> Barrier(0.5, 0.1, 0.5, 0.5, "linear").to_dict()["loss"]
    0.5
    """

    loss: float
    accuracy: float
    loss_lambda: float
    accuracy_lambda: float
    definition: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable record."""
        return asdict(self)


def barrier(curve: Curve, definition: str = "linear") -> Barrier:
    """The loss and accuracy barriers of ``curve`` (lam = 1 is A, lam = 0 is B).

    ``"linear"`` (default, as in Theus et al.): max over lam of
    ``L(lam) - (lam L(A) + (1 - lam) L(B))``, and for accuracy
    ``(lam acc(A) + (1 - lam) acc(B)) - acc(lam)``. ``"mean"`` (git re-basin): max over lam of
    ``L(lam) - (L(A) + L(B)) / 2``, and ``(acc(A) + acc(B)) / 2 - acc(lam)``.

    >>> c = Curve([0.0, 0.5, 1.0], [1.0, 3.0, 2.0], [0.8, 0.2, 0.6])
    >>> barrier(c).loss, round(barrier(c).accuracy, 10), barrier(c, "mean").loss
    (1.5, 0.5, 1.5)
    """
    if definition not in DEFINITIONS:
        raise UsageError(f"unknown barrier definition '{definition}'{suggest(definition, DEFINITIONS)}; "
                         f"choose one of {DEFINITIONS}")
    loss_a, acc_a = curve.at(1.0)
    loss_b, acc_b = curve.at(0.0)

    def reference(lam: float, at_a: float, at_b: float) -> float:
        if definition == "linear":
            return lam * at_a + (1.0 - lam) * at_b
        return 0.5 * (at_a + at_b)

    loss_gap = [(loss - reference(lam, loss_a, loss_b), lam) for lam, loss in zip(curve.lambdas, curve.loss)]
    acc_gap = [(reference(lam, acc_a, acc_b) - acc, lam) for lam, acc in zip(curve.lambdas, curve.accuracy)]
    # key: the first lambda reaching the maximum wins a tie
    loss_value, loss_lambda = max(loss_gap, key=lambda pair: pair[0])
    acc_value, acc_lambda = max(acc_gap, key=lambda pair: pair[0])
    return Barrier(float(loss_value), float(acc_value), float(loss_lambda), float(acc_lambda), definition)
