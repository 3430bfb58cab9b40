"""The lowest floating-point precision a model actually computes in.

A model run in float64 for the numeric check may still cast to float32 inside (transformers'
RMSNorm computes its variance in float32 and casts back), which limits how exactly any symmetry
can be verified: a rotation of the residual stream then holds to float32 rounding, not float64.
The check measures that precision on the forward pass and states it, instead of failing.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves


class _LowestDtype(TorchFunctionMode):
    """Records the least precise floating dtype among every torch function's tensor results."""

    def __init__(self) -> None:
        super().__init__()
        self.lowest: torch.dtype | None = None
        self.where: str | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(result):
            if isinstance(leaf, torch.Tensor) and leaf.is_floating_point():
                if self.lowest is None or torch.finfo(leaf.dtype).eps > torch.finfo(self.lowest).eps:
                    self.lowest = leaf.dtype
                    self.where = getattr(func, "__name__", None) or repr(func)
        return result


def lowest_precision(run: Callable[[], Any]) -> tuple[torch.dtype | None, str | None]:
    """``(dtype, function)``: the least precise floating dtype that ``run()`` computes a tensor in,
    and the first torch function that produced it (``(None, None)`` if no floating tensor).

    >>> net = torch.nn.Linear(3, 2).double()
    >>> lowest_precision(lambda: net(torch.randn(1, 3, dtype=torch.float64)))[0]
    torch.float64
    >>> lowest_precision(lambda: net(torch.randn(1, 3, dtype=torch.float64)).float())
    (torch.float32, 'float')
    """
    mode = _LowestDtype()
    with mode, torch.no_grad():
        run()
    return mode.lowest, mode.where


def achievable_tolerance(requested: float, dtype: torch.dtype | None) -> float:
    """The tolerance a check can ask for when the model computes in ``dtype``: the requested one,
    or 100 rounding units of ``dtype`` if that is larger (float32: 1.2e-5).

    >>> achievable_tolerance(1e-9, torch.float64), achievable_tolerance(1e-9, torch.float32)
    (1e-09, 1.1920928955078125e-05)
    """
    if dtype is None:
        return requested
    return max(requested, 100 * torch.finfo(dtype).eps)
