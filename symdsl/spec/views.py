"""Views of a tensor along one bound axis, part by part: where each part's entries are.

A plain fused axis ``[q | k | v]`` is a concatenation: part p is a contiguous range. A split
nested in a composite, ``(heads [qk | qkp])`` of size h * (r + p), is not: part ``(heads qk)``
is the first r entries of every head. Viewing the axis as ``(h, r + p)`` and taking a range of
the inner dimension gives it. Both cases (and a fused axis whose parts are nested blocks,
``[(kv g [qk | qkp]) | (kv [qk' | qkp']) | kv ov]``) go through :func:`part_view` (read one part
with its factors as dimensions) and :func:`map_parts` (rewrite every part), which the action
engine and weight matching's unfolding share.

>>> import torch
>>> from symdsl.spec.binding import BoundAxis, BoundFactor
>>> h, qk, qkp = BoundFactor(2, "heads"), BoundFactor(2, "qk"), BoundFactor(1, "qkp")
>>> axis = BoundAxis(((h, qk), (h, qkp)), nest=((2, 1),))          # (heads [qk | qkp]): 2 * 3 entries
>>> x = torch.arange(6)
>>> part_view(x, 0, axis, 0), part_view(x, 0, axis, 1)               # (h, 2) and (h, 1)
(tensor([[0, 1],
        [3, 4]]), tensor([[2],
        [5]]))
>>> map_parts(x, 0, axis, lambda y, p: -y if p == 1 else y)
tensor([ 0,  1, -2,  3,  4, -5])
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .binding import BoundAxis
from .pattern import blocks_of


def _size(factors) -> int:
    return math.prod(f.size for f in factors)


def _block_sizes(axis: BoundAxis) -> list[int]:
    return [sum(_size(p) for p in axis.parts[first:first + count]) for first, count, _ in blocks_of(len(axis.parts), axis.nest)]


def part_view(x: torch.Tensor, dim: int, axis: BoundAxis, part: int) -> torch.Tensor:
    """Axis ``dim`` of ``x`` narrowed to ``part`` and reshaped into the part's factors, shared
    ones first: ``(..., n, ...)`` becomes ``(..., f_1, ..., f_m, ...)``."""
    lead, trail = x.shape[:dim], x.shape[dim + 1:]
    offset = 0
    for (first, count, shared), size in zip(blocks_of(len(axis.parts), axis.nest), _block_sizes(axis)):
        if first <= part < first + count:
            block = x.narrow(dim, offset, size)
            sizes = [f.size for f in axis.parts[part]]
            if shared:
                outer = sizes[:shared]
                inner = [_size(p[shared:]) for p in axis.parts[first:first + count]]
                block = block.reshape(*lead, *outer, sum(inner), *trail)
                block = block.narrow(dim + shared, sum(inner[:part - first]), inner[part - first])
            return block.reshape(*lead, *sizes, *trail)
        offset += size
    raise IndexError(f"axis has {len(axis.parts)} parts, not {part + 1}")


def map_parts(x: torch.Tensor, dim: int, axis: BoundAxis,
              fn: Callable[[torch.Tensor, int], torch.Tensor]) -> torch.Tensor:
    """``x`` with every part of axis ``dim`` replaced by ``fn(part_view, part)``; ``fn`` keeps the
    view's rank and may change the size of a factor (rectangular kinds), as long as the parts
    of a block keep their shared factors' sizes alike."""
    lead, trail = x.shape[:dim], x.shape[dim + 1:]
    out, offset = [], 0
    for (first, count, shared), size in zip(blocks_of(len(axis.parts), axis.nest), _block_sizes(axis)):
        block = x.narrow(dim, offset, size)
        offset += size
        if shared:
            outer = [f.size for f in axis.parts[first][:shared]]
            inner = [_size(p[shared:]) for p in axis.parts[first:first + count]]
            block = block.reshape(*lead, *outer, sum(inner), *trail)
            pieces = torch.split(block, inner, dim=dim + shared)
            done = []
            for p, piece in zip(range(first, first + count), pieces):
                y = fn(piece.reshape(*lead, *[f.size for f in axis.parts[p]], *trail), p)
                done.append(y.reshape(*y.shape[:dim + shared], -1, *trail))
            joined = torch.cat(done, dim=dim + shared)
            out.append(joined.reshape(*lead, -1, *trail))
        else:
            y = fn(block.reshape(*lead, *[f.size for f in axis.parts[first]], *trail), first)
            out.append(y.reshape(*lead, -1, *trail))
    return torch.cat(out, dim=dim) if len(out) > 1 else out[0]
