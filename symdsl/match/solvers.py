"""Per-group solvers for  max_g tr(g^T C)  (the linear step of weight matching).

- permutation: linear assignment (scipy) on C;
- orthogonal: Procrustes, the polar factor U V^T of C (with ``preserve: ones`` on the
  complement of the ones vector);
- stiefel: the thin polar factor (rectangular Procrustes);
- semi_permutation: surjective assignment of every output to an input (each input used at
  least once), solved exactly as a square assignment: n_in "must use" columns plus
  n_out - n_in "free" columns worth each output's best input.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ..groups.base import GroupKind


def maximize_trace(kind: GroupKind, c: torch.Tensor, options: dict | None = None) -> torch.Tensor:
    """argmax over the group of tr(g^T C); ``c`` is (..., n_out, n_in), batched over leading dims.

    >>> from symdsl.groups import get_group_kind
    >>> maximize_trace(get_group_kind("permutation"), torch.tensor([[0., 5.], [4., 1.]]))
    tensor([1, 0])
    """
    if kind.name == "semi_permutation":
        return _surjective_assignment(c)
    return kind.project(c, options=options or {})


def _surjective_assignment(c: torch.Tensor) -> torch.Tensor:
    if c.ndim > 2:
        return torch.stack([_surjective_assignment(m) for m in c])
    n_out, n_in = c.shape
    values = c.detach().double().cpu().numpy()
    best = values.max(axis=1, keepdims=True)                     # (n_out, 1): a free output takes its best input
    square = np.concatenate([values, np.repeat(best, n_out - n_in, axis=1)], axis=1)   # (n_out, n_out)
    rows, cols = linear_sum_assignment(square, maximize=True)
    choice = np.where(cols < n_in, cols, values.argmax(axis=1)[rows])
    out = np.empty(n_out, dtype=np.int64)
    out[rows] = choice
    return torch.as_tensor(out, device=c.device)
