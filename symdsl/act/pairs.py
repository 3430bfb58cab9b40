"""Pair elements: a primal and a dual matrix acting on the two variances of one site.

A site's element usually determines its dual (g^-T). Two uses need the two matrices given
separately: a width lift (the query/key side is rescaled on purpose) and learned matching's
differentiable action (permutations as dense straight-through matrices, dual = inv(g)^T computed
by autograd). :class:`PairKind` lets the action engine apply both through the spec's bindings.
"""
from __future__ import annotations

import torch

from ..groups.base import GroupKind
from ..groups.plumbing import Tensor, apply_matrix, normalize_axes


def pair(primal: Tensor, dual: Tensor) -> Tensor:
    """Stack the primal and dual matrices ``(..., n_w, n_n)`` into one lift element ``(..., 2, n_w, n_n)``.

    >>> pair(torch.eye(3, 2), torch.eye(3, 2)).shape
    torch.Size([2, 3, 2])
    """
    if primal.shape != dual.shape:
        raise ValueError(f"primal {tuple(primal.shape)} and dual {tuple(dual.shape)} must have one shape")
    return torch.stack([primal, dual], dim=-3)


class PairKind(GroupKind):
    """Applies pair elements ``(..., 2, n_out, n_in)``: index 0 on primal factors, 1 on dual ones.

    Not a group (there is no inverse or composition); only :meth:`apply`, :meth:`to_matrix`,
    :meth:`dual`, :meth:`identity` and :meth:`contains` are meaningful. Used for width lifts
    (:mod:`symdsl.width`) and for learned matching's differentiable action
    (:mod:`symdsl.learn.dense_action`), whose permutations act as dense matrices.

    >>> k = PairKind()
    >>> g = pair(2 * torch.eye(3, 2, dtype=torch.float64), 0.5 * torch.eye(3, 2, dtype=torch.float64))
    >>> k.apply(g, torch.ones(2, dtype=torch.float64), 0), k.apply(g, torch.ones(2, dtype=torch.float64), 0, dual=True)
    (tensor([2., 2., 0.], dtype=torch.float64), tensor([0.5000, 0.5000, 0.0000], dtype=torch.float64))
    """

    name = "pair"
    square = False
    self_dual = False
    matrix_based = True

    def identity(self, n_out, n_in=None, batch=(), *, options=None, dtype=torch.float64, device=None) -> Tensor:
        """The canonical embedding on both sides."""
        n_out, n_in = self._sizes(n_out, n_in)
        eye = torch.eye(n_out, n_in, dtype=dtype, device=device)
        return pair(eye, eye).expand(*tuple(batch), 2, n_out, n_in).clone()

    def random(self, n_out, n_in=None, batch=(), *, options=None, generator=None, dtype=torch.float64, device=None):
        raise ValueError("pair elements are built from their two matrices (symdsl.act.pairs.pair), not drawn at random")

    def to_matrix(self, g: Tensor, *, dtype=None, n_in=None) -> Tensor:
        """The primal matrix P."""
        m = g[..., 0, :, :]
        return m if dtype is None else m.to(dtype)

    def dual(self, g: Tensor, *, n_in=None) -> Tensor:
        """The dual matrix D (stored, not computed: e.g. a lift's query/key maps are not pinv pairs)."""
        return g[..., 1, :, :]

    def inverse(self, g: Tensor) -> Tensor:
        raise ValueError("a pair element (e.g. a lift map) need not be invertible and has no inverse")

    def compose(self, a: Tensor, b: Tensor) -> Tensor:
        raise ValueError("pair elements are not composed")

    def contains(self, g, options=None, atol: float = 1e-8, *, n_in=None) -> bool:
        """A float tensor ``(..., 2, n_out, n_in)`` with n_out >= n_in."""
        return (isinstance(g, Tensor) and g.is_floating_point() and g.dim() >= 3 and g.shape[-3] == 2
                and g.shape[-2] >= g.shape[-1] and (n_in is None or g.shape[-1] == n_in))

    def project(self, m: Tensor, *, options=None) -> Tensor:
        raise ValueError("pair elements are not projected")

    def apply(self, g: Tensor, x: Tensor, dim: int, *, dual: bool = False, batch_dim: int | None = None) -> Tensor:
        """Contract axis ``dim`` of x with P (or D when ``dual``); per-index maps batch along ``batch_dim``."""
        dim, batch_dim = normalize_axes(x, dim, batch_dim)
        m = g[..., 1 if dual else 0, :, :]                  # (n_out, n_in) or (B, n_out, n_in)
        if m.shape[-1] != x.shape[dim] or (batch_dim is not None and m.shape[0] != x.shape[batch_dim]):
            raise ValueError(f"pair element {tuple(m.shape)} does not fit axis {dim} of a tensor {tuple(x.shape)}")
        return apply_matrix(m, x, dim, batch_dim)


PAIR = PairKind()
