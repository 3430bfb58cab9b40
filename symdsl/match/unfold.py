"""Unfold a tensor along one site factor: the matrices whose correlations weight matching maximises.

For a tensor bound by a pattern, every place where a site appears is an *occurrence* (axis,
part of a fused axis, factor, variance). Unfolding an occurrence gives a matrix (n, rest) —
rows indexed by the site's coordinates — or, for a site declared ``per`` a parent, a batch
(P, n, rest) indexed by the parent's positions.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..spec.binding import ResolvedSpec, TensorBinding
from ..spec.views import part_view


@dataclass(frozen=True)
class Occurrence:
    tensor: str
    axis: int
    part: int
    factor: int
    dual: bool


def occurrences(resolved: ResolvedSpec, site: str) -> list[Occurrence]:
    """Every place ``site`` appears in the spec's tensors."""
    out = []
    for name, binding in resolved.tensors.items():
        for a, axis in enumerate(binding.axes):
            for p, part in enumerate(axis.parts):
                for f, factor in enumerate(part):
                    if factor.site == site:
                        out.append(Occurrence(name, a, p, f, factor.dual))
    return out


def _part_view(x: torch.Tensor, binding: TensorBinding, axis: int, part: int) -> torch.Tensor:
    return part_view(x, axis, binding.axes[axis], part)


def _factor_dim(binding: TensorBinding, occ: Occurrence, name: str) -> int | None:
    """The dimension (of the part view) of factor ``name`` (a site or a dim) in the occurrence's axis."""
    for j, f in enumerate(binding.axes[occ.axis].parts[occ.part]):
        if f.site == name or (f.site is None and f.dim == name):
            return occ.axis + j
    return None


def unfold(x: torch.Tensor, binding: TensorBinding, occ: Occurrence, parent: str | None = None,
           inner: str | None = None) -> torch.Tensor:
    """(n, rest) — or (P, n, rest) when ``parent`` (a site or dim name) indexes the site's elements,
    or (P, m, n, rest) when ``inner`` also names a site per the same parent whose m positions are
    kept apart (query heads inside a key/value group; m = 1 where the tensor lacks it)."""
    y = _part_view(x, binding, occ.axis, occ.part)
    target = occ.axis + occ.factor
    factors = binding.axes[occ.axis].parts[occ.part]
    if parent is None:
        return y.movedim(target, 0).reshape(y.shape[target], -1)
    parent_dim = _factor_dim(binding, occ, parent)
    if parent_dim is None:
        shift = len(factors) - 1
        for other, axis in enumerate(binding.axes):
            whole = len(axis.parts) == 1 and len(axis.parts[0]) == 1
            f = axis.parts[0][0]
            if other != occ.axis and whole and (f.site == parent or (f.site is None and f.dim == parent)):
                parent_dim = other if other < occ.axis else other + shift
    if parent_dim is None:
        raise ValueError(f"'{binding.name}' has no factor '{parent}' next to its per-site factor")
    inner_dim = _factor_dim(binding, occ, inner) if inner is not None else None
    if inner is None:
        y = y.movedim((parent_dim, target), (0, 1))
        return y.reshape(y.shape[0], y.shape[1], -1)
    if inner_dim is None:
        y = y.movedim((parent_dim, target), (0, 1))
        return y.reshape(y.shape[0], 1, y.shape[1], -1)
    y = y.movedim((parent_dim, inner_dim, target), (0, 1, 2))
    return y.reshape(y.shape[0], y.shape[1], y.shape[2], -1)
