"""The lowest floating-point precision a model actually computes in.

A model run in float64 for the numeric check may still cast to float32 inside (transformers'
RMSNorm computes its variance in float32 and casts back), which limits how exactly any symmetry
can be verified: a rotation of the residual stream then holds to float32 rounding, not float64.
The check measures that precision on the forward pass and states it, instead of failing.

A model may also not run in float64 at all (a kernel with no float64 path, where the model
offers no other choice): :func:`runs_in` then finds the most precise dtype of ``CHECK_DTYPES``
it runs in, and the check states it and asks for the tolerance that dtype allows.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

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


# the dtypes the numeric check runs a model in, most precise first; below float32 (100 rounding
# units of bfloat16 is 0.8) a relative error shows nothing, so the check stops there
CHECK_DTYPES = (torch.float64, torch.float32)


def runs_in(model: torch.nn.Module, forward: Callable[[torch.dtype], Callable[[], Any]],
            dtypes: Sequence[torch.dtype] = CHECK_DTYPES) -> tuple[torch.dtype | None, list[tuple[torch.dtype, str]]]:
    """The first of ``dtypes`` that ``model`` runs in, and why each one before it failed.

    ``model`` is cast to each dtype in turn (and left in the one that runs); ``forward(dtype)``
    returns the call that runs it (inputs made in that dtype). ``(None, failures)`` if none runs.

    >>> class NoDouble(torch.nn.Linear):
    ...     def forward(self, x):
    ...         if x.dtype == torch.float64:
    ...             raise RuntimeError("Expected mat_a to be Float32")
    ...         return super().forward(x)
    >>> net = NoDouble(3, 2)
    >>> runs_in(net, lambda dtype: lambda: net(torch.ones(1, 3, dtype=dtype)))
    (torch.float32, [(torch.float64, 'RuntimeError: Expected mat_a to be Float32')])
    """
    failures: list[tuple[torch.dtype, str]] = []
    for dtype in dtypes:
        model.to(dtype)
        try:
            with torch.no_grad():
                forward(dtype)()
        except Exception as exc:  # any failure in this dtype is a reason to try the next one
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            failures.append((dtype, f"{type(exc).__name__}: {lines[0] if lines else '(no message)'}"))
            continue
        return dtype, failures
    return None, failures
