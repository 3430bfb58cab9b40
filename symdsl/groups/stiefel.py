"""Stiefel matrices: isometric embeddings ``R^n_in -> R^n_out`` (``n_out >= n_in``).

An element is a float tensor ``(..., n_out, n_in)`` with orthonormal columns,
``g^T g = I``.  They widen a layer without changing the function: ``W1 -> g W1``
and ``W2 -> W2 g^T``.  Since ``pinv(g) = g^T``, the dual ``pinv(g)^T`` is g.
"""
from __future__ import annotations

import torch

from symdsl.groups.base import MatrixGroupKind
from symdsl.groups.plumbing import (Tensor, all_close, batch_shape,
                                    expand_batch, is_float_matrix, tolerance)
from symdsl.groups.orthogonal import haar_orthogonal, polar_factor
from symdsl.groups.parametrizations import Parametrization, cayley, skew


class Stiefel(MatrixGroupKind):
    """Matrices ``(n_out, n_in)`` with orthonormal columns.

    >>> k = Stiefel()
    >>> g = k.random(4, 2, generator=torch.Generator().manual_seed(0))
    >>> torch.allclose(g.T @ g, torch.eye(2, dtype=torch.float64))
    True
    """

    name = "stiefel"
    isometric = True
    square = False
    self_dual = True   # dual(g) = pinv(g)^T = g for orthonormal columns
    options: dict[str, tuple] = {}

    def permutation_restriction(self, options=None) -> "Stiefel":
        """Itself: an embedding site is matched in full even with ``permutations_only``.

        A rectangular embedding has no permutations inside it (n_out != n_in), and dropping
        the site would leave the two models' widths unmatched.
        """
        return self

    def identity(self, n_out, n_in=None, batch=(), *, options=None,
                 dtype=torch.float64, device=None) -> Tensor:
        """The canonical embedding onto the first n_in coordinates, ``eye(n_out, n_in)``.

        >>> Stiefel().identity(3, 2)
        tensor([[1., 0.],
                [0., 1.],
                [0., 0.]], dtype=torch.float64)
        """
        self.validate_options(options)
        n_out, n_in = self._sizes(n_out, n_in)
        eye = torch.eye(n_out, n_in, dtype=dtype, device=device)
        return expand_batch(eye, batch_shape(batch))

    def random(self, n_out, n_in=None, batch=(), *, options=None, generator=None,
               dtype=torch.float64, device=None) -> Tensor:
        """The first n_in columns of a Haar orthogonal ``n_out x n_out`` matrix (uniform).

        >>> Stiefel().random(5, 3, batch=(2,)).shape
        torch.Size([2, 5, 3])
        """
        self.validate_options(options)
        n_out, n_in = self._sizes(n_out, n_in)
        q = haar_orthogonal(n_out, batch_shape(batch), generator, dtype, device)
        return q[..., :, :n_in].contiguous()

    def dual(self, g: Tensor, *, n_in: int | None = None) -> Tensor:
        """``g`` itself: ``pinv(g)^T = (g^T)^T = g`` because ``g^T g = I``.

        >>> Stiefel().dual(torch.eye(3, 2)).shape
        torch.Size([3, 2])
        """
        self._check_n_in(g, n_in)
        return g

    def inverse(self, g: Tensor) -> Tensor:
        """Always raises ``ValueError``: an embedding has no group inverse.

        Use ``dual(g)`` (``apply(..., dual=True)``) for the other side of a layer.

        >>> Stiefel().inverse(torch.eye(3, 2))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: stiefel elements have no group inverse ...; use dual(g) / apply(..., dual=True) ...
        """
        raise ValueError("stiefel elements have no group inverse (they embed R^n_in in R^n_out); "
                         "use dual(g) / apply(..., dual=True) for the other side of the layer")

    def contains(self, g, options=None, atol: float = 1e-8, *, n_in: int | None = None) -> bool:
        """True if g is float ``(..., n_out, n_in)``, n_out >= n_in, with ``g^T g = I``.

        >>> k = Stiefel()
        >>> k.contains(torch.eye(3, 2)), k.contains(torch.ones(3, 2))
        (True, False)
        """
        self.validate_options(options)
        if not is_float_matrix(g) or g.shape[-2] < g.shape[-1]:
            return False
        k = g.shape[-1]
        if n_in is not None and n_in != k:
            return False
        eye = torch.eye(k, dtype=g.dtype, device=g.device)
        return all_close(g.mT @ g, eye, tolerance(atol, g.dtype, g.shape[-2]))

    def parametrize(self, g0: Tensor, *, options=None, n_in: int | None = None):
        """``cayley(A) @ g0`` with A skew-symmetric (n_out x n_out).

        >>> Stiefel().parametrize(torch.eye(3, 2, dtype=torch.float64)).element().shape
        torch.Size([3, 2])
        """
        return CayleyStiefel(g0)

    def project(self, m: Tensor, *, options=None) -> Tensor:
        """The nearest element in Frobenius norm: ``U V^T`` from the thin SVD of m.

        >>> Stiefel().project(torch.tensor([[2.0, 0.0], [0.0, 5.0], [0.0, 0.0]]))
        tensor([[1., 0.],
                [0., 1.],
                [0., 0.]])
        """
        self.validate_options(options)
        if m.dim() < 2 or m.shape[-2] < m.shape[-1]:
            raise ValueError(f"stiefel.project needs matrices (..., n_out, n_in) with "
                             f"n_out >= n_in, got shape {tuple(m.shape)}")
        return polar_factor(m)


class CayleyStiefel(Parametrization):
    """``cayley(A) @ g0`` for a rectangular g0 ``(n_out, n_in)`` with orthonormal columns.

    >>> g0 = torch.eye(3, 2, dtype=torch.float64)
    >>> p = CayleyStiefel(g0)
    >>> primal, dual = p.dense()
    >>> primal.shape, bool(torch.equal(primal, dual))
    (torch.Size([3, 2]), True)
    """

    def __init__(self, g0: Tensor):
        super().__init__()
        self.register_buffer("start", g0.detach().clone())
        n = g0.shape[-2]
        self.generator = torch.nn.Parameter(torch.zeros(*g0.shape[:-2], n, n, dtype=g0.dtype, device=g0.device))

    def dense(self):
        g = cayley(skew(self.generator)) @ self.start
        return g, g        # orthonormal columns: pinv(g)^T = g

    def element(self) -> Tensor:
        with torch.no_grad():
            return self.dense()[0].detach().clone()
