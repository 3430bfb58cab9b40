"""Learning-rate schedules, as multipliers of the base rate per step (for ``torch.optim.lr_scheduler.LambdaLR``)."""
from __future__ import annotations

import math
from typing import Callable

from ..errors import UsageError, suggest

SCHEDULES = ("cosine", "constant")


def lr_multiplier(schedule: str, steps: int, *, warmup: int = 0,
                  final_fraction: float = 0.0) -> Callable[[int], float]:
    """The function step -> multiplier: linear warmup over ``warmup`` steps, then ``constant`` (1) or
    ``cosine`` decay from 1 to ``final_fraction`` at the last step.

    >>> f = lr_multiplier("cosine", 11)
    >>> f(0), round(f(5), 6), f(10)
    (1.0, 0.5, 0.0)
    """
    if schedule not in SCHEDULES:
        raise UsageError(f"unknown learning-rate schedule '{schedule}'{suggest(schedule, SCHEDULES)}; "
                         f"choose one of {SCHEDULES}")
    if warmup < 0 or (warmup and warmup >= steps):
        raise UsageError(f"warmup ({warmup}) must be between 0 and steps - 1 ({steps - 1})")

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        span = max(steps - 1 - warmup, 1)
        progress = min((step - warmup) / span, 1.0)
        return final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return multiplier
