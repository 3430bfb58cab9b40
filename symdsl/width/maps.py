"""Lift maps: the linear maps that embed a narrow model's sites into a wide model's.

A lift is not a symmetry: it changes sizes, and its two sides are chosen separately. Each site
gets a pair ``(P, D)`` of ``(n_wide, n_narrow)`` matrices stacked as one tensor
``(..., 2, n_wide, n_narrow)``: a factor bound primal (a writer's output axis) is multiplied by
P, a factor bound dual (a reader's input axis) by D. A contraction ``reader @ writer`` then
becomes ``reader @ D^T P @ writer``, unchanged when ``D^T P = I`` (``D = pinv(P)^T``), which is
what every map here satisfies except the query/key maps, where ``D^T P = c I`` on purpose
(c corrects the softmax temperature when the head dim grows).

The action engine (:mod:`symdsl.act.engine`) applies these like any group element through
:class:`LiftKind`, so the lift reuses the spec's tensor bindings unchanged.
"""
from __future__ import annotations

import math

import torch

from ..groups.base import GroupKind, Tensor, apply_matrix, normalize_axes
from ..groups.orthogonal import Orthogonal
from ..groups.semi_permutation import SemiPermutation, copy_counts
from ..groups.stiefel import Stiefel


def pair(primal: Tensor, dual: Tensor) -> Tensor:
    """Stack the primal and dual matrices ``(..., n_w, n_n)`` into one lift element ``(..., 2, n_w, n_n)``.

    >>> pair(torch.eye(3, 2), torch.eye(3, 2)).shape
    torch.Size([2, 3, 2])
    """
    if primal.shape != dual.shape:
        raise ValueError(f"primal {tuple(primal.shape)} and dual {tuple(dual.shape)} must have one shape")
    return torch.stack([primal, dual], dim=-3)


class LiftKind(GroupKind):
    """Applies lift elements ``(..., 2, n_out, n_in)``: index 0 on primal factors, 1 on dual ones.

    Not a group (there is no inverse or composition); only :meth:`apply`, :meth:`to_matrix`,
    :meth:`dual`, :meth:`identity` and :meth:`contains` are meaningful.

    >>> k = LiftKind()
    >>> g = pair(2 * torch.eye(3, 2, dtype=torch.float64), 0.5 * torch.eye(3, 2, dtype=torch.float64))
    >>> k.apply(g, torch.ones(2, dtype=torch.float64), 0), k.apply(g, torch.ones(2, dtype=torch.float64), 0, dual=True)
    (tensor([2., 2., 0.], dtype=torch.float64), tensor([0.5000, 0.5000, 0.0000], dtype=torch.float64))
    """

    name = "lift"
    square = False
    self_dual = False
    matrix_based = True

    def identity(self, n_out, n_in=None, batch=(), *, options=None, dtype=torch.float64, device=None) -> Tensor:
        """The canonical embedding on both sides."""
        n_out, n_in = self._sizes(n_out, n_in)
        eye = torch.eye(n_out, n_in, dtype=dtype, device=device)
        return pair(eye, eye).expand(*tuple(batch), 2, n_out, n_in).clone()

    def random(self, n_out, n_in=None, batch=(), *, options=None, generator=None, dtype=torch.float64, device=None):
        raise ValueError("lift maps are built by symdsl.width.lift, not drawn at random")

    def to_matrix(self, g: Tensor, *, dtype=None, n_in=None) -> Tensor:
        """The primal matrix P."""
        m = g[..., 0, :, :]
        return m if dtype is None else m.to(dtype)

    def dual(self, g: Tensor, *, n_in=None) -> Tensor:
        """The dual matrix D (stored, not computed: the query/key maps are not pinv pairs)."""
        return g[..., 1, :, :]

    def inverse(self, g: Tensor) -> Tensor:
        raise ValueError("a lift map changes sizes and has no inverse")

    def compose(self, a: Tensor, b: Tensor) -> Tensor:
        raise ValueError("lift maps are not composed")

    def contains(self, g, options=None, atol: float = 1e-8, *, n_in=None) -> bool:
        """A float tensor ``(..., 2, n_out, n_in)`` with n_out >= n_in."""
        return (isinstance(g, Tensor) and g.is_floating_point() and g.dim() >= 3 and g.shape[-3] == 2
                and g.shape[-2] >= g.shape[-1] and (n_in is None or g.shape[-1] == n_in))

    def project(self, m: Tensor, *, options=None) -> Tensor:
        raise ValueError("lift maps are not projected")

    def apply(self, g: Tensor, x: Tensor, dim: int, *, dual: bool = False, batch_dim: int | None = None) -> Tensor:
        """Contract axis ``dim`` of x with P (or D when ``dual``); per-index maps batch along ``batch_dim``."""
        dim, batch_dim = normalize_axes(x, dim, batch_dim)
        m = g[..., 1 if dual else 0, :, :]                  # (n_out, n_in) or (B, n_out, n_in)
        if m.shape[-1] != x.shape[dim] or (batch_dim is not None and m.shape[0] != x.shape[batch_dim]):
            raise ValueError(f"lift map {tuple(m.shape)} does not fit axis {dim} of a tensor {tuple(x.shape)}")
        return apply_matrix(m, x, dim, batch_dim)


LIFT = LiftKind()


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
