"""Refine a group element by L-BFGS on an exact objective (used for invertible sites)."""
from __future__ import annotations

from typing import Callable

import torch


def refine_lbfgs(start: torch.Tensor, loss: Callable[[torch.Tensor], torch.Tensor], kind, options=None, *,
                 max_iter: int = 100, tolerance_change: float = 1e-14, history_size: int = 100,
                 gradient: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
                 ) -> tuple[torch.Tensor, bool]:
    """L-BFGS (strong Wolfe line search) from ``start``; returns ``(element, improved)``.

    The refined element is returned only if it is finite, lowers ``loss`` and is a valid
    element of ``kind`` (e.g. well-conditioned for ``invertible``); otherwise ``start``.
    ``gradient(g) -> (loss, d loss / d g)`` replaces autograd when given (a closed-form
    gradient of a small objective is several times cheaper than its autograd graph);
    ``history_size`` is L-BFGS's memory (each iteration costs two passes over it).

    >>> from symdsl.groups import get_group_kind
    >>> target = torch.tensor([[2.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    >>> g, ok = refine_lbfgs(torch.eye(2, dtype=torch.float64), lambda g: ((g - target) ** 2).sum(),
    ...                      get_group_kind("invertible"))
    >>> ok, torch.allclose(g, target)
    (True, True)
    """
    g = start.detach().clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([g], lr=1, max_iter=max_iter, tolerance_grad=1e-12, history_size=history_size,
                                  tolerance_change=tolerance_change, line_search_fn="strong_wolfe")

    def closure():
        if gradient is not None:
            value, g.grad = gradient(g.detach())
            return value
        optimizer.zero_grad()
        value = loss(g)
        value.backward()
        return value

    try:
        with torch.enable_grad():
            optimizer.step(closure)
    except RuntimeError:          # a singular step: keep the start
        return start, False
    refined = g.detach()
    with torch.no_grad():
        better = bool(torch.isfinite(refined).all()) and float(loss(refined)) < float(loss(start))
    if better and kind.contains(refined, options):
        return refined, True
    return start, False
