"""Correlation terms kept across sweeps while the other side of their tensor does not change.

Weight matching solves a site from  C = sum_t A_t B'_t^T, where B'_t is B's tensor t with every
*other* site's current element applied. When none of those elements changed since C's term for t
was formed, the same matmul would give the same term, bit for bit (same operands, same thread
count). Measured on two random GPT-2 smalls: after the anchored pass no MLP or head permutation
changed again, so the residual rotation's (768, 768) float64 terms of the MLP tensors (c_fc,
c_proj: 2/3 of its 130 GFLOP a sweep) are formed once and reused by every later sweep, together
with the upcast and permutation of B they would need.

The owner decides what is worth keeping (a term no larger than its tensor, whose other sites
rarely change) and gives each entry a *stamp* (dtype and the versions of the other sites); a
lookup with another stamp is a miss. Entries are bounded by ``budget`` bytes.
"""
from __future__ import annotations

from typing import Any, Hashable


class TermCache:
    """A bounded map ``key -> value`` valid only for the stamp it was stored with.

    >>> import torch
    >>> cache = TermCache(budget=1 << 20)
    >>> term = torch.ones(4, 4, dtype=torch.float64)
    >>> cache.put(("resid", "w"), (1,), term, term.numel() * 8)
    True
    >>> cache.get(("resid", "w"), (1,)) is term, cache.get(("resid", "w"), (2,))
    (True, None)
    """

    def __init__(self, budget: int):
        self.budget = budget
        self.held = 0           # bytes of the stored values
        self.hits = 0           # lookups answered (benchmarks, tests)
        self._entries: dict[Hashable, tuple[Hashable, Any, int]] = {}

    def get(self, key: Hashable, stamp: Hashable) -> Any:
        """The value stored under ``key`` with this ``stamp``, else None."""
        entry = self._entries.get(key)
        if entry is None or entry[0] != stamp:
            return None
        self.hits += 1
        return entry[1]

    def put(self, key: Hashable, stamp: Hashable, value: Any, nbytes: int) -> bool:
        """Store ``value`` (replacing ``key``'s old entry); False when it does not fit the budget."""
        old = self._entries.pop(key, None)
        if old is not None:
            self.held -= old[2]
        if self.held + nbytes > self.budget:
            return False
        self._entries[key] = (stamp, value, nbytes)
        self.held += nbytes
        return True
