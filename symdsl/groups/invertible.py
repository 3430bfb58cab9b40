"""Invertible matrices GL(n) (e.g. the value/output pair of an attention head).

An element is a float tensor ``(..., n, n)``; "valid" means finite and well
conditioned (condition number below ``MAX_CONDITION``), since a nearly
singular element would destroy the weights it touches.  The dual is
``g^{-T}``.
"""
from __future__ import annotations

import torch

from symdsl.groups.base import MatrixGroupKind
from symdsl.groups.plumbing import (Tensor, batch_shape,
                                    generator_device, is_float_matrix)
from symdsl.groups.orthogonal import haar_orthogonal
from symdsl.groups.parametrizations import Parametrization

MAX_CONDITION = 1e12


def condition_number(m: Tensor) -> Tensor:
    """2-norm condition number ``s_max / s_min`` of ``(..., n, n)``; inf if singular.

    >>> condition_number(torch.diag(torch.tensor([4.0, 0.5])))
    tensor(8.)
    """
    if m.shape[-1] == 0:
        return torch.ones(m.shape[:-2], dtype=m.dtype, device=m.device)
    s = torch.linalg.svdvals(m)                          # (..., n), descending
    return s[..., 0] / s[..., -1]


class Invertible(MatrixGroupKind):
    """GL(n): any well-conditioned invertible matrix.

    >>> k = Invertible()
    >>> g = k.random(3, generator=torch.Generator().manual_seed(0))
    >>> torch.allclose(k.compose(g, k.inverse(g)), torch.eye(3, dtype=torch.float64))
    True
    """

    name = "invertible"
    square = True
    self_dual = False
    options: dict[str, tuple] = {}
    # g changes the norm of what it acts on, so maximising tr(g^T C) is not the least-squares fit
    least_squares_fit = True

    def permutation_restriction(self, options=None) -> None:
        """None: with ``permutations_only`` an invertible site keeps its starting element."""
        return None

    def lift_rule(self, options=None, *, per: bool = False) -> str:
        """``"embed"``: a per-head map widens by an orthonormal embedding on both of its sides."""
        return "embed"

    def random(self, n_out, n_in=None, batch=(), *, options=None, generator=None,
               dtype=torch.float64, device=None) -> Tensor:
        """``Q1 @ diag(s) @ Q2``: Haar Q1, Q2 and singular values s uniform in [0.5, 2].

        So the condition number is at most 4, and since Haar orthogonal
        matrices have det +-1 with equal odds, det takes either sign.

        >>> g = Invertible().random(4, generator=torch.Generator().manual_seed(0))
        >>> bool(condition_number(g) <= 4)
        True
        """
        self.validate_options(options)
        n, _ = self._sizes(n_out, n_in)
        batch = batch_shape(batch)
        q1 = haar_orthogonal(n, batch, generator, dtype, device)   # (*batch, n, n)
        q2 = haar_orthogonal(n, batch, generator, dtype, device)   # (*batch, n, n)
        s = torch.rand(*batch, n, generator=generator, dtype=dtype,
                       device=generator_device(generator, device)).to(device)
        s = 0.5 + 1.5 * s                                          # (*batch, n) in [0.5, 2]
        return (q1 * s.unsqueeze(-2)) @ q2                         # scale q1's columns

    def dual(self, g: Tensor, *, n_in: int | None = None) -> Tensor:
        """``g^{-T}`` (computed in g's dtype).

        >>> Invertible().dual(torch.tensor([[2.0, 1.0], [0.0, 4.0]]))
        tensor([[ 0.5000,  0.0000],
                [-0.1250,  0.2500]])
        """
        self._check_n_in(g, n_in)
        return torch.linalg.inv(g).mT

    def inverse(self, g: Tensor) -> Tensor:
        """The matrix inverse ``g^{-1}``.

        >>> Invertible().inverse(torch.tensor([[2.0, 0.0], [0.0, 4.0]]))
        tensor([[0.5000, 0.0000],
                [0.0000, 0.2500]])
        """
        return torch.linalg.inv(g)

    def contains(self, g, options=None, atol: float = 1e-8, *, n_in: int | None = None) -> bool:
        """True if g is square, float, finite and ``cond(g) < 1e12``.

        ``atol`` is unused (conditioning, not closeness, decides).

        >>> k = Invertible()
        >>> k.contains(torch.eye(2, dtype=torch.float64)), k.contains(torch.zeros(2, 2))
        (True, False)
        """
        self.validate_options(options)
        if not is_float_matrix(g) or g.shape[-1] != g.shape[-2]:
            return False
        if n_in is not None and n_in != g.shape[-1]:
            return False
        if not bool(torch.isfinite(g).all()):
            return False
        return bool((condition_number(g) < MAX_CONDITION).all())

    def parametrize(self, g0: Tensor, *, options=None, n_in: int | None = None):
        """The matrix itself; its condition number is kept below 1e4 after every step.

        >>> Invertible().parametrize(torch.eye(2, dtype=torch.float64)).element()
        tensor([[1., 0.],
                [0., 1.]], dtype=torch.float64)
        """
        return FreeInvertible(g0)

    def project(self, m: Tensor, *, options=None) -> Tensor:
        """m itself if it is a valid element; otherwise raise ``ValueError``.

        Invertible matrices are open in the space of matrices, so there is no
        "nearest" singular-free point to snap to: a bad m is an error.

        >>> Invertible().project(torch.eye(2)).shape
        torch.Size([2, 2])
        """
        self.validate_options(options)
        if m.dim() < 2 or m.shape[-1] != m.shape[-2]:
            raise ValueError(f"invertible.project needs square matrices (..., n, n), "
                             f"got shape {tuple(m.shape)}")
        if not self.contains(m):
            cond = condition_number(m).max().item() if bool(torch.isfinite(m).all()) else float("nan")
            raise ValueError(f"matrix is not a usable invertible element: condition number "
                             f"{cond:.3g} (must be finite and < {MAX_CONDITION:.0e})")
        return m


class FreeInvertible(Parametrization):
    """The matrix itself (batched per head), dual ``inv(g)^T``; conditioning kept below ``max_condition``.

    After each optimiser step :meth:`project` clips its singular values so that the condition
    number stays below ``max_condition``.

    >>> p = FreeInvertible(2 * torch.eye(2, dtype=torch.float64))
    >>> primal, dual = p.dense()
    >>> dual.detach()
    tensor([[0.5000, 0.0000],
            [0.0000, 0.5000]], dtype=torch.float64)
    """

    def __init__(self, g0: Tensor, *, max_condition: float = 1e4):
        super().__init__()
        self.matrix = torch.nn.Parameter(g0.detach().clone())
        self.max_condition = float(max_condition)

    def dense(self):
        return self.matrix, torch.linalg.inv(self.matrix).mT

    def element(self) -> Tensor:
        return self.matrix.detach().clone()

    def project(self) -> None:
        with torch.no_grad():
            u, s, vh = torch.linalg.svd(self.matrix)                 # s: (..., k), descending
            floor = s[..., :1] / self.max_condition
            if bool((s < floor).any()):
                self.matrix.copy_(u @ torch.diag_embed(torch.maximum(s, floor)) @ vh)
