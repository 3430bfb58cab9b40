"""Activation statistics of a permutation child nested in a permutation parent (sub-heads).

Grouped-query attention: a key/value head (the parent, P positions) serves g query heads (a
permutation child: one permutation of its g positions per parent position, ``per`` the parent)
and carries per-parent maps (rotary q/k, invertible o/v: the *matrix children*, acting alike on
the g query heads of their group). A node whose head axis is (parent child) -- the query
projection's output (parent child qk), the attention output (parent child ov) -- is read as
P * g *sub-heads*: parent head a, child position j, the remaining m' coordinates.

With the parent assigned (B's head parent[a] at A's position a), A's sub-head (a, j) is compared
with B's (parent[a], j') by the mean squared canonical correlation of their centred activations
(as the parent was, see :meth:`.activation_stats.Moments.subspace_similarity`): it cannot change
under any invertible map of a sub-head's own coordinates, so the matrix children, still unknown,
do not affect it. The child at A's position a is the assignment on that (g, g) matrix (the
``per`` convention: y[a] = G[a] x[perm[a]], elements indexed by the parent's target position).

Once the child is known, the matrix children read the same nodes: A's sub-head (a, j) pairs with
B's sub-head (parent[a], child[a][j]), and the g pairs of a parent position are g more samples of
the one per-parent map, so their moments are summed over j into (P, m', m') blocks.

Everything comes from the moments already collected (the full cross moment and the per-parent
diagonal blocks, whose (g, g) diagonal sub-blocks are the sub-heads' own second moments).
"""
from __future__ import annotations

from typing import Mapping

import torch

from .activation_stats import Moments, inverse_sqrt

F64 = torch.float64


def nested_child(sites: Mapping, root: str, kids: list[str]) -> str | None:
    """The one child of ``root`` that permutes positions inside each of the parent's positions.

    Only for a parent whose elements are index arrays (the blocks are read at parent[a]); None
    when there is no such child or more than one (then every child is fitted as before).
    """
    if sites[root].kind.matrix_based:
        return None
    found = [kid for kid in kids if sites[kid].kind.discrete and sites[kid].kind.permutes_positions]
    return found[0] if len(found) == 1 else None


def reads_child(moments: Moments, root: str, child: str) -> bool:
    """Does this node carry the child next to its parent (the parent's factor first)?"""
    sites = [f.site for f in moments.plan.features]
    return sites[0] == root and child in sites[1:] and moments.aa is not None


def _layout(moments: Moments, child: str) -> tuple[list[int], int]:
    """The within-head factor sizes (row-major, parent excluded) and the child's index among them."""
    sizes = [f.size for f in moments.plan.features[1:]]
    index = [f.site for f in moments.plan.features[1:]].index(child)
    return sizes, index


def _split(x: torch.Tensor, dim: int, sizes: list[int], index: int) -> torch.Tensor:
    """Cut axis ``dim`` (m = prod(sizes), row-major) into (g, m'): the child's factor first.

    >>> x = torch.arange(6).reshape(1, 6)        # one head, factors (f 2, c 3): c is the child
    >>> _split(x, 1, [2, 3], 1).tolist()          # sub-head j holds f coordinates j and 3 + j
    [[[0, 3], [1, 4], [2, 5]]]
    """
    shape = list(x.shape)
    x = x.reshape(*shape[:dim], *sizes, *shape[dim + 1:]).movedim(dim + index, dim)
    g = sizes[index]
    return x.reshape(*shape[:dim], g, shape[dim] // g, *shape[dim + 1:])


def _diagonal(x: torch.Tensor) -> torch.Tensor:
    """(P, g, m', g, m') -> (P, g, m', m'): each sub-head against itself."""
    return x.diagonal(dim1=1, dim2=3).movedim(-1, 1)


def _pair_blocks(moments: Moments, matrix: torch.Tensor, parent: torch.Tensor, child: str) -> torch.Tensor:
    """(P, g, m', g, m'): a (D, D) matrix's block (a, parent[a]) with both heads cut into sub-heads."""
    sizes, index = _layout(moments, child)
    block = moments.blocks(matrix, parent)                                   # (P, m, m)
    return _split(_split(block, 2, sizes, index), 1, sizes, index)


def _own_blocks(moments: Moments, second: torch.Tensor, child: str) -> torch.Tensor:
    """(P, g, m', m'): the sub-heads' own second moments from per-head blocks (P, m, m)."""
    sizes, index = _layout(moments, child)
    return _diagonal(_split(_split(second, 2, sizes, index), 1, sizes, index))


def subhead_similarity(moments: Moments, parent: torch.Tensor, child: str) -> torch.Tensor:
    """(P, g, g): mean squared canonical correlation of A's sub-head (a, j) with B's (parent[a], j').

    >>> from .activation_graph import Feature, Plan
    >>> features = (Feature("h", False, 2), Feature("c", False, 2), Feature("f", False, 2))
    >>> plan = Plan("x", "h", None, None, (400, 8), (400, 8), (0,), (1,), features)
    >>> m = Moments(plan, parent=True, blocks=True, device="cpu")
    >>> a = torch.randn(400, 2, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> mix = torch.tensor([[2.0, 1.0], [0.5, -1.0]], dtype=torch.float64)   # a map of f, alike per head
    >>> b = a.flip(1, 2) @ mix.T                  # B's head 1 is A's head 0, sub-heads swapped, f mixed
    >>> m.update(a.reshape(400, 8), b.reshape(400, 8))
    >>> (subhead_similarity(m, torch.tensor([1, 0]), "c") > 0.99).long().tolist()
    [[[0, 1], [1, 0]], [[0, 1], [1, 0]]]
    """
    sizes, index = _layout(moments, child)
    n, p = moments.n, moments.p
    mean_a = _split((moments.sum_a / n).reshape(p, -1), 1, sizes, index)                 # (P, g, m')
    mean_b = _split((moments.sum_b / n).reshape(p, -1), 1, sizes, index)[parent.to(mean_a.device)]
    cov_aa = _own_blocks(moments, moments.aa / n, child) - torch.einsum("pjx,pjy->pjxy", mean_a, mean_a)
    bb = moments.bb[parent.to(moments.bb.device)] / n                                     # B's head parent[a]
    cov_bb = _own_blocks(moments, bb, child) - torch.einsum("pjx,pjy->pjxy", mean_b, mean_b)
    cross = _pair_blocks(moments, moments.ab / n, parent, child) - torch.einsum("pjx,pky->pjxky", mean_a, mean_b)
    wa, wb = inverse_sqrt(cov_aa), inverse_sqrt(cov_bb)                                # (P, g, m', m')
    k = torch.einsum("pjxy,pjykz,pkzw->pjxkw", wa, cross, wb)        # whitened cross-covariance per sub-head pair
    return (k ** 2).sum((2, 4)) / mean_a.shape[-1]


def through_child(moments: Moments, matrix: torch.Tensor, parent: torch.Tensor, child: str,
                  matched: torch.Tensor) -> torch.Tensor:
    """(P, m', m'): sum over j of the block of A's sub-head (a, j) against B's matched one.

    ``matrix`` (D, D), A's coordinates as rows; ``matched`` (P, g, g) the child's elements as
    matrices (row j: the B sub-head that goes to A's position j).
    """
    return torch.einsum("pjxkz,pjk->pxz", _pair_blocks(moments, matrix, parent, child), matched.to(matrix))


def a_through_child(moments: Moments, child: str) -> torch.Tensor:
    """(P, m', m'): E[a a^T] of A's sub-heads, summed over the g of each parent position."""
    return _own_blocks(moments, moments.aa / moments.n, child).sum(1)


def b_through_child(moments: Moments, parent: torch.Tensor, child: str, matched: torch.Tensor) -> torch.Tensor:
    """(P, m', m'): E[b b^T] of the B sub-heads matched to A's position a, summed over j."""
    bb = _own_blocks(moments, moments.bb[parent.to(moments.bb.device)] / moments.n, child)   # (P, g, m', m')
    return torch.einsum("pkxz,pjk->pxz", bb, matched.to(bb))
