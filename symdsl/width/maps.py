"""Lift maps: the linear maps that embed a narrow model's sites into a wide model's.

A lift is not a symmetry: it changes sizes, and its two sides are chosen separately. Each site
gets a pair ``(P, D)`` of ``(n_wide, n_narrow)`` matrices stacked as one tensor
``(..., 2, n_wide, n_narrow)``: a factor bound primal (a writer's output axis) is multiplied by
P, a factor bound dual (a reader's input axis) by D. A contraction ``reader @ writer`` then
becomes ``reader @ D^T P @ writer``, unchanged when ``D^T P = I`` (``D = pinv(P)^T``), which is
what every map here satisfies except the query/key maps, where ``D^T P = c I`` on purpose
(c corrects the softmax temperature when the head dim grows).

The action engine (:mod:`symdsl.act.engine`) applies these like any group element through
:class:`symdsl.act.pairs.PairKind` (the same kind learned matching's differentiable action uses), so
the lift reuses the spec's tensor bindings unchanged.
"""
from __future__ import annotations

import math

import torch

from ..act.pairs import PairKind, pair
from ..groups.plumbing import Tensor
from ..groups.orthogonal import Orthogonal
from ..groups.semi_permutation import SemiPermutation, copy_counts
from ..groups.stiefel import Stiefel


# A lift element is a (primal, dual) pair of matrices: the action engine's pair kind applies it.
LIFT = PairKind()


def residual_embedding(d_wide: int, d_narrow: int, *, randomize: bool = False,
                       generator: torch.Generator | None = None) -> Tensor:
    """An embedding E ``(d_wide, d_narrow)`` with orthonormal columns and ``E^T 1 = 1``.

    ``E^T 1 = 1`` keeps a mean-zero residual mean-zero, so LayerNorm's centring stays a no-op.
    The default is the identity embedding; ``randomize`` draws ``O_w eye O_n^T`` with O_w, O_n
    random rotations fixing the ones vector (used by the tests to rule out lucky coordinates).

    >>> e = residual_embedding(5, 3, randomize=True, generator=torch.Generator().manual_seed(0))
    >>> torch.allclose(e.T @ e, torch.eye(3, dtype=torch.float64)), torch.allclose(e.T @ torch.ones(5, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    (True, True)
    """
    eye = torch.eye(d_wide, d_narrow, dtype=torch.float64)
    if not randomize:
        return eye
    rot = Orthogonal()
    o_w = rot.random(d_wide, options={"preserve": "ones"}, generator=generator)   # (d_w, d_w), O_w 1 = 1
    o_n = rot.random(d_narrow, options={"preserve": "ones"}, generator=generator)  # (d_n, d_n), O_n 1 = 1
    return o_w @ eye @ o_n.T


def residual_pair(embedding: Tensor) -> tuple[Tensor, float]:
    """``(P, D) = (s E, E / s)`` with ``s = sqrt(d_wide / d_narrow)``, and s.

    s makes ``|s E x|^2 / d_wide = |x|^2 / d_narrow``: every LayerNorm of the wide model sees the
    narrow model's variance, so even its eps acts identically.

    >>> g, s = residual_pair(torch.eye(8, 2, dtype=torch.float64))
    >>> s, float(g[0, 0, 0]), float(g[1, 0, 0])
    (2.0, 2.0, 0.5)
    """
    d_wide, d_narrow = embedding.shape
    s = math.sqrt(d_wide / d_narrow)
    return pair(s * embedding, embedding / s), s


def copy_map(n_wide: int, n_narrow: int, batch: tuple[int, ...] = (), *, randomize: bool = False,
             generator: torch.Generator | None = None) -> Tensor:
    """A surjective copy map ``(*batch, n_wide)``: wide unit a copies narrow unit ``g[a]``.

    Default ``a mod n_narrow``; ``randomize`` draws a random surjective map.

    >>> copy_map(5, 2)
    tensor([0, 1, 0, 1, 0])
    """
    kind = SemiPermutation()
    if randomize:
        return kind.random(n_wide, n_narrow, batch, generator=generator)
    return kind.identity(n_wide, n_narrow, batch)


def copy_pair(g: Tensor, n_narrow: int) -> Tensor:
    """``(P, D)`` of a copy map: P copies, D copies and divides by the copy count (``D^T P = I``).

    Exact for units behind an elementwise nonlinearity (MLP units) and for attention heads
    (each copy computes the same attention pattern): the reader sums the copies back.

    >>> copy_pair(torch.tensor([0, 1, 0]), 2)[1]
    tensor([[0.5000, 0.0000],
            [0.0000, 1.0000],
            [0.5000, 0.0000]], dtype=torch.float64)
    """
    kind = SemiPermutation()
    primal = kind.to_matrix(g, n_in=n_narrow)                                   # (..., n_w, n_n) 0/1
    counts = copy_counts(g, n_narrow).to(torch.float64)                          # (..., n_n)
    return pair(primal, primal / counts.unsqueeze(-2))


def embedding_pair(n_wide: int, n_narrow: int, batch: tuple[int, ...] = (), *, scale: float = 1.0,
                   randomize: bool = False, generator: torch.Generator | None = None) -> Tensor:
    """``(P, D) = (scale E, E)`` with E ``(*batch, n_wide, n_narrow)`` orthonormal columns.

    ``D^T P = scale I``: scale 1 for value/output maps; for query/key maps scale is the softmax
    temperature correction (queries primal, keys dual).

    >>> embedding_pair(3, 2, scale=2.0)[0]
    tensor([[2., 0.],
            [0., 2.],
            [0., 0.]], dtype=torch.float64)
    """
    kind = Stiefel()
    e = (kind.random(n_wide, n_narrow, batch, generator=generator) if randomize
         else kind.identity(n_wide, n_narrow, batch))
    return pair(scale * e, e)
