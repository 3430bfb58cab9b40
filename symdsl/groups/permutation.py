"""Permutations of n units (e.g. the hidden neurons of an MLP, or attention heads).

An element is a LongTensor ``g`` of shape ``(..., n)`` holding a permutation of
``range(n)``; applying it to x gives ``y[a] = x[g[a]]``.  Permutation matrices
are orthogonal, so the dual is the element itself.

:class:`PermutationMatrix` is the same group written as dense matrices: the permutations inside
a matrix kind (what an orthogonal site is restricted to with ``permutations_only``).
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from symdsl.groups.base import IndexGroupKind, MatrixGroupKind
from symdsl.groups.plumbing import (Tensor, all_close, batch_shape,
                                    expand_batch, is_float_matrix, is_index_array, random_permutation, tolerance)
from symdsl.groups.parametrizations import StraightThrough


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

    discrete = True

    def lift_rule(self, options=None, *, per: bool = False) -> str:
        """``"copy"``: units (MLP neurons, heads) widen by copying, exact behind elementwise maps."""
        return "copy"

    def parametrize(self, g0: Tensor, *, options=None, n_in: int | None = None):
        """Hard assignment forward, straight-through gradient (:class:`StraightThroughPermutation`).

        >>> Permutation().parametrize(torch.tensor([1, 0])).element()
        tensor([1, 0])
        """
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


class PermutationMatrix(MatrixGroupKind):
    """Permutations as dense 0/1 matrices ``(..., n, n)``: S_n inside a matrix kind.

    Not used in specs: it is what a matrix kind (``orthogonal``) returns from
    :meth:`~symdsl.groups.base.GroupKind.permutation_restriction`, so that a site restricted to
    permutations keeps its dense representation.

    >>> k = PermutationMatrix()
    >>> k.maximize_trace(torch.tensor([[0.1, 0.9], [0.8, 0.2]]))
    tensor([[0., 1.],
            [1., 0.]])
    """

    name = "permutation_matrix"
    elementwise_equivariant = True
    isometric = True
    discrete = True
    square = True
    self_dual = True
    options: dict[str, tuple] = {}

    def random(self, n_out, n_in=None, batch=(), *, options=None, generator=None,
               dtype=torch.float64, device=None) -> Tensor:
        """The matrix of a uniformly random permutation per batch entry.

        >>> PermutationMatrix().random(3, generator=torch.Generator().manual_seed(0)).sum(-1).tolist()
        [1.0, 1.0, 1.0]
        """
        g = Permutation().random(n_out, n_in, batch, options=options, generator=generator, device=device)
        return Permutation().to_matrix(g, dtype=dtype)

    def dual(self, g: Tensor, *, n_in: int | None = None) -> Tensor:
        """``g`` itself (a permutation matrix is orthogonal)."""
        self._check_n_in(g, n_in)
        return g

    def inverse(self, g: Tensor) -> Tensor:
        """The transpose.

        >>> PermutationMatrix().inverse(torch.tensor([[0., 1.], [1., 0.]])).tolist()
        [[0.0, 1.0], [1.0, 0.0]]
        """
        return g.mT

    def contains(self, g, options=None, atol: float = 1e-8, *, n_in: int | None = None) -> bool:
        """True if g is a square float matrix of 0s and 1s with one 1 per row and per column.

        >>> k = PermutationMatrix()
        >>> k.contains(torch.eye(3)), k.contains(torch.ones(3, 3))
        (True, False)
        """
        self.validate_options(options)
        if not is_float_matrix(g) or g.shape[-1] != g.shape[-2] or (n_in is not None and n_in != g.shape[-1]):
            return False
        tol = tolerance(atol, g.dtype, g.shape[-1])
        binary = all_close(g * (1 - g), 0.0, tol)
        return binary and all_close(g.sum(-1), 1.0, tol) and all_close(g.sum(-2), 1.0, tol)

    def project(self, m: Tensor, *, options=None) -> Tensor:
        """The permutation matrix nearest to m (linear assignment), in m's dtype.

        >>> PermutationMatrix().project(torch.tensor([[0.0, 2.0], [3.0, 1.0]])).tolist()
        [[0.0, 1.0], [1.0, 0.0]]
        """
        self.validate_options(options)
        return Permutation().to_matrix(Permutation().project(m), dtype=m.dtype)

    def parametrize(self, g0: Tensor, *, options=None, n_in: int | None = None):
        """Straight-through assignment whose element stays a dense matrix (in g0's dtype).

        >>> PermutationMatrix().parametrize(torch.eye(2)).element().tolist()
        [[1.0, 0.0], [0.0, 1.0]]
        """
        self.validate_options(options)
        dtype = g0.dtype if g0.is_floating_point() else torch.float64
        return StraightThroughPermutation(g0, dtype=dtype, as_matrix=True)


class StraightThroughPermutation(StraightThrough):
    """Hard permutation forward, straight-through gradient to a score matrix.

    ``g0`` is an index array ``(..., n)`` or a dense permutation matrix ``(..., n, n)``
    (``as_matrix=True`` makes :meth:`element` return a dense matrix, for a matrix site
    restricted to permutations).

    >>> p = StraightThroughPermutation(torch.tensor([2, 0, 1]))
    >>> p.element()
    tensor([2, 0, 1])
    >>> primal, dual = p.dense()
    >>> primal.argmax(-1)
    tensor([2, 0, 1])
    """

    def __init__(self, g0: Tensor, *, dtype=torch.float64, as_matrix: bool = False):
        super().__init__(PermutationMatrix() if as_matrix else Permutation(), g0, dtype=dtype)
