"""Kernels a check can run in float64 and trace: a loader option, chosen by what the model offers.

transformers 5 runs the experts of a mixture-of-experts block (Mixtral, Qwen2-MoE, ...) through
a kernel chosen by ``config._experts_implementation``. The default, ``"grouped_mm"``, sorts the
(token, expert) pairs by expert and calls a grouped matmul that has no float64 path ("Expected
mat_a to be Float32 ... got Double"), with data-dependent offsets (sort, histc, cumsum).
``"batched_mm"`` computes the same function from plain ops: each token row repeated top-k times
(S = tokens * k rows), the selected experts' weights gathered (``gate_up_proj[ids]``: (S, 2f, d)),
one batched matmul per projection, and a sum over the k choices. It runs in any dtype and traces
to ops the static check has rules for (:mod:`symdsl.graph.ops.moe`). The loop-based ``"eager"``
runs in float64 too, but its loop over the experts hit depends on the data and cannot be traced.

The switch goes through transformers' public ``set_experts_implementation``, on the copy a check
works on; a model without that method, or without experts, is left alone.
"""
from __future__ import annotations

import torch

# the experts implementation that runs in every dtype with static shapes
EXACT_EXPERTS = "batched_mm"


def experts_implementation(model: torch.nn.Module) -> str | None:
    """The experts kernel a transformers model will use (None for a model that has no such setting).

    >>> experts_implementation(torch.nn.Linear(2, 2)) is None
    True
    """
    config = getattr(model, "config", None)
    return getattr(config, "_experts_implementation", None) if config is not None else None


def use_exact_kernels(model: torch.nn.Module) -> list[str]:
    """Switch ``model`` in place to kernels that run in float64 and trace; notes on what changed.

    Today: a transformers model whose experts run through a selectable implementation gets
    ``"batched_mm"`` (see the module docstring). Returns one note per change (empty: nothing to do).

    >>> use_exact_kernels(torch.nn.Linear(2, 2))
    []
    """
    before = experts_implementation(model)
    setter = getattr(model, "set_experts_implementation", None)
    if before is None or before == EXACT_EXPERTS or not callable(setter):
        return []
    try:
        setter(EXACT_EXPERTS)
    except (ValueError, KeyError, RuntimeError):   # an implementation this transformers cannot switch
        return []
    after = experts_implementation(model)
    if after == before:                            # a class without selectable experts (e.g. Llama)
        return []
    return [f"experts run with transformers' '{after}' implementation instead of '{before}' (same function; "
            "plain gather and batched matmuls that run in float64 and trace)"]
