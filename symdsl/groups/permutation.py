"""Permutations of n units (e.g. the hidden neurons of an MLP, or attention heads).

An element is a LongTensor ``g`` of shape ``(..., n)`` holding a permutation of
``range(n)``; applying it to x gives ``y[a] = x[g[a]]``.  Permutation matrices
are orthogonal, so the dual is the element itself.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from symdsl.groups.base import (IndexGroupKind, Tensor, batch_shape, expand_batch,
                                is_index_array, random_permutation)


class Permutation(IndexGroupKind):
    """The symmetric group S_n acting by reordering one axis.

    >>> k = Permutation()
    >>> g = torch.tensor([2, 0, 1])
    >>> k.apply(g, torch.tensor([10., 20., 30.]), dim=0)
    tensor([30., 10., 20.])
    >>> k.inverse(g)
    tensor([1, 2, 0])
    """

    name = "permutation"
    elementwise_equivariant = True
    isometric = True
    square = True
    self_dual = True
    options: dict[str, tuple] = {}

    def _check_apply_size(self, g: Tensor, n_in: int) -> None:
        if g.shape[-1] != n_in:
            raise ValueError(f"permutation of size {g.shape[-1]} cannot act on an axis of size {n_in}")

    def identity(self, n_out, n_in=None, batch=(), *, options=None,
                 dtype=torch.float64, device=None) -> Tensor:
        """``arange(n)`` repeated over ``batch``; ``dtype`` is ignored (indices are int64).

        >>> Permutation().identity(3, batch=(2,))
        tensor([[0, 1, 2],
                [0, 1, 2]])
        """
        self.validate_options(options)
        n, _ = self._sizes(n_out, n_in)
        return expand_batch(torch.arange(n, device=device), batch_shape(batch))

    def random(self, n_out, n_in=None, batch=(), *, options=None, generator=None,
               dtype=torch.float64, device=None) -> Tensor:
        """A uniformly random permutation per batch entry (int64, ``dtype`` ignored).

        >>> g = Permutation().random(5, generator=torch.Generator().manual_seed(0))
        >>> sorted(g.tolist())
        [0, 1, 2, 3, 4]
        """
        self.validate_options(options)
        n, _ = self._sizes(n_out, n_in)
        return random_permutation(n, batch_shape(batch), generator, device)

    def dual(self, g: Tensor, *, n_in: int | None = None) -> Tensor:
        """``g`` itself: a permutation matrix P has ``P^{-T} = P``.

        >>> Permutation().dual(torch.tensor([1, 0]))
        tensor([1, 0])
        """
        self._check_n_in(g, n_in)
        return g

    def inverse(self, g: Tensor) -> Tensor:
        """The inverse permutation, ``argsort(g)`` along the last axis.

        >>> Permutation().inverse(torch.tensor([2, 0, 1]))
        tensor([1, 2, 0])
        """
        return g.argsort(dim=-1)

    def contains(self, g, options=None, atol: float = 1e-8, *, n_in: int | None = None) -> bool:
        """True if g is an integer tensor whose last axis is a permutation of ``range(n)``.

        >>> k = Permutation()
        >>> k.contains(torch.tensor([1, 0, 2])), k.contains(torch.tensor([1, 1, 2]))
        (True, False)
        """
        self.validate_options(options)
        if not is_index_array(g) or (n_in is not None and n_in != g.shape[-1]):
            return False
        n = g.shape[-1]
        return bool((g.sort(dim=-1).values == torch.arange(n, device=g.device)).all())

    def parametrize(self, g0: Tensor, *, options=None, n_in: int | None = None):
        """Hard assignment forward, straight-through gradient (see :mod:`symdsl.learn.parametrize`).

        >>> Permutation().parametrize(torch.tensor([1, 0])).element()
        tensor([1, 0])
        """
        from symdsl.learn.parametrize import StraightThroughPermutation

        return StraightThroughPermutation(g0)

    def project(self, m: Tensor, *, options=None) -> Tensor:
        """The permutation maximising ``sum_a m[a, g[a]]`` (= trace of ``P^T m``).

        That is the permutation matrix nearest to m in Frobenius norm.  Solved
        exactly by ``scipy.optimize.linear_sum_assignment`` on the CPU, one
        batch entry at a time; the result is an index array on m's device.

        >>> Permutation().project(torch.tensor([[0.1, 0.9], [0.8, 0.2]]))
        tensor([1, 0])
        """
        self.validate_options(options)
        if m.dim() < 2 or m.shape[-1] != m.shape[-2]:
            raise ValueError(f"permutation.project needs square matrices (..., n, n), "
                             f"got shape {tuple(m.shape)}")
        n = m.shape[-1]
        scores = m.detach().to("cpu", torch.float64).reshape(-1, n, n).numpy()  # (K, n, n)
        out = np.empty((scores.shape[0], n), dtype=np.int64)                     # (K, n)
        for k, score in enumerate(scores):
            rows, cols = linear_sum_assignment(score, maximize=True)
            out[k, rows] = cols
        return torch.from_numpy(out).reshape(m.shape[:-1]).to(m.device)
