"""Activations of gathered stacked weights: per-sites read where their parent is an index.

A mixture of experts stores its experts stacked, ``gate_up_proj`` (E, 2f, d) with the expert
site on axis 0 and each expert's units (a site ``per`` the expert site) on axis 1, and gathers
the rows it needs per token: ``w = gate_up_proj[ids]`` (S, 2f, d), ids (S,) the routed experts.
Every activation computed from ``w`` (``bmm(w, x)``: (S, 2f); the SwiGLU product: (S, f))
carries the units but no expert factor: row s holds expert ids[s]'s units, moved by *that*
expert's element. So the parent is an index that varies from row to row, known only at run
time.

Such a node is read as if the expert axis were there: each row is scattered into the block
of the expert it was routed to, zeros elsewhere, giving (N, E * m) -- in A by A's ids, in B by
B's. If B is A with its experts permuted (router rows and stacked weights alike), B routes
every token to the permuted positions of the same experts, so B's block parent[a] is A's
block a with that expert's units permuted, exactly as at a node with a real expert axis, and
the family is solved as any parent with per-sites (experts assigned on the blocks' subspace
similarity, the units per expert on their correlations).
"""
from __future__ import annotations

import math
from collections import deque
from typing import Mapping

import torch

from symdsl.graph.capture_types import CapturedGraph, Ref
from symdsl.graph.types import sites_in

GATHER_OPS = frozenset({"index"})       # x[..., ids, ...]: one axis of x gathered at the positions ids


def index_tensor(node) -> Ref | None:
    """The one index tensor of ``index(x, [None, ..., ids])``; None unless there is exactly one."""
    indices = node.args[1] if len(node.args) > 1 else node.kwargs.get("indices")
    given = [i for i in (indices or ()) if i is not None]
    return given[0] if len(given) == 1 and isinstance(given[0], Ref) else None


def weight_gathers(graph: CapturedGraph, roots: Mapping[str, str], leaves: frozenset[str]) -> set[str]:
    """Gathers of stored tensors (``param[ids]``): weights selected per row, not activations.

    ``roots``: node -> the node whose data it shows (through layout ops); ``leaves``: the ops
    of stored tensors and inputs.
    """
    out = set()
    for node in graph.nodes:
        if node.op in GATHER_OPS and node.args and isinstance(node.args[0], Ref):
            source = graph.node(roots[node.args[0].name])
            if source.op in leaves or source.name in out:
                out.add(node.name)
    return out


def find_gather(graph: CapturedGraph, values: Mapping, name: str, parent: str) -> Ref | None:
    """The index tensor of the nearest gather upstream of ``name`` that removes ``parent``'s axis.

    Breadth-first over the node's inputs: the gather of the same layer comes before any in
    an earlier layer (which would gather another parent site anyway).
    """
    queue, seen = deque([name]), {name}
    while queue:
        node = graph.node(queue.popleft())
        if node.op in GATHER_OPS and node.args and isinstance(node.args[0], Ref):
            ids = index_tensor(node)
            if (ids is not None and parent in _sites(values.get(node.args[0].name))
                    and parent not in _sites(values.get(node.name))):
                return ids
        for ref in node.refs():
            if ref.name not in seen:
                seen.add(ref.name)
                queue.append(ref.name)
    return None


def rows_follow(ids_shape, factor_shape, sample_factors) -> bool:
    """Do the ids index the leading sample factors (the node's rows, in the ids' order)?

    The gather turns the gathered axis into the ids' axes, which then lead the activation:
    (S, 2f) from ids (S,). The ids' size must be the product of the first factors, and those
    must all be samples, so that sample r of the flattened (N, m) matrix has id r // (N / S).
    """
    count = math.prod(ids_shape)
    size, k = 1, 0
    while size < count and k < len(factor_shape):
        size *= factor_shape[k]
        k += 1
    return size == count and tuple(sample_factors[:k]) == tuple(range(k))


def scatter_rows(x: torch.Tensor, ids: torch.Tensor, parents: int) -> torch.Tensor:
    """(N, P * m): row r of ``x`` (N, m) in block ids[r // (N / S)] (S = ids.numel()), zeros elsewhere.

    >>> x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    >>> scatter_rows(x, torch.tensor([2, 0]), 3).tolist()
    [[0.0, 0.0, 0.0, 0.0, 1.0, 2.0], [3.0, 4.0, 0.0, 0.0, 0.0, 0.0]]
    """
    n, m = x.shape
    ids = ids.reshape(-1).to(device=x.device, dtype=torch.long)
    ids = ids.repeat_interleave(n // ids.numel())                         # (N,): each row's parent position
    out = x.new_zeros(n, parents, m)
    out[torch.arange(n, device=x.device), ids] = x
    return out.reshape(n, parents * m)


def _sites(value) -> list[str]:
    try:
        return sites_in(value)
    except TypeError:
        return []
