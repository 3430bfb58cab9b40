"""Trainable group elements: what :meth:`GroupKind.parametrize` returns, for learned matching.

A parametrisation is a ``torch.nn.Module`` that starts at a given element ``g0``. Its
:meth:`Parametrization.dense` returns the pair ``(primal, dual)`` of dense matrices
``(..., n_out, n_in)`` that the differentiable action contracts tensors with: ``primal`` on axes
bound to the site, ``dual`` on axes bound to its dual (``site'``). :meth:`Parametrization.element`
returns the current element in the kind's own representation (an index array for permutations).

This module holds what every kind can share: the base class, :func:`cayley`, and
:class:`StraightThrough`, which learns any discrete kind through its own
:meth:`GroupKind.maximize_trace`. Each built-in kind keeps its own parametrisation next to it
(``symdsl.groups.orthogonal.CayleyOrthogonal``, ...), so that ``symdsl.groups`` needs nothing
from learned matching.

>>> from symdsl.groups.permutation import Permutation
>>> p = StraightThrough(Permutation(), torch.tensor([2, 0, 1]))
>>> p.element(), p.dense()[0].argmax(-1)
(tensor([2, 0, 1]), tensor([2, 0, 1]))
"""
from __future__ import annotations

from typing import Mapping

import torch

from symdsl.groups.base import GroupKind
from symdsl.groups.plumbing import Tensor


class Parametrization(torch.nn.Module):
    """A trainable group element. Subclasses implement :meth:`dense` and :meth:`element`.

    ``lr_scale`` multiplies the optimiser's learning rate for this element's parameters: a
    straight-through score matrix must move by O(1) before its assignment changes, while a
    rotation's generator acts on the weights directly. Score matrices default to 10x (what
    learning permutations alone needs); the learned matcher sets the multiplier of every
    parametrisation with ``straight_through`` (its ``permutation_lr`` option).
    """

    lr_scale: float = 1.0
    #: The element is a hard choice made from a score matrix, with gradients passed straight
    #: through to the scores: its learning rate follows the learned matcher's ``permutation_lr``.
    straight_through: bool = False

    def dense(self) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        """``(primal, dual)`` dense matrices ``(..., n_out, n_in)``, differentiable in the parameters."""
        raise NotImplementedError

    def element(self) -> Tensor:  # pragma: no cover - abstract
        """The current element in the group kind's own representation (detached)."""
        raise NotImplementedError

    def project(self) -> None:
        """Called after every optimiser step: pull the parameters back to a valid element."""

    def forward(self) -> tuple[Tensor, Tensor]:
        """:meth:`dense` (so ``torch.func.functional_call`` can evaluate it at other parameters)."""
        return self.dense()


def cayley(a: Tensor) -> Tensor:
    """``(I - A)^-1 (I + A)``: orthogonal for skew-symmetric A (batched over leading dims).

    >>> a = torch.tensor([[0.0, 0.3], [-0.3, 0.0]], dtype=torch.float64)
    >>> q = cayley(a)
    >>> bool(torch.allclose(q @ q.T, torch.eye(2, dtype=torch.float64)))
    True
    """
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    return torch.linalg.solve(eye - a, eye + a)


def skew(k: Tensor) -> Tensor:
    """``K - K^T``: a free square matrix made skew-symmetric (the generator of a rotation).

    >>> skew(torch.tensor([[1.0, 2.0], [0.0, 1.0]]))
    tensor([[ 0.,  2.],
            [-2.,  0.]])
    """
    return k - k.mT


class StraightThrough(Parametrization):
    """Hard element forward, straight-through gradient to a score matrix S.

    S starts at the dense matrix of ``g0``; the forward pass uses the hard element
    ``kind.maximize_trace(S)`` (its dense matrix P) and the backward pass treats P as S
    (``P + S - stop_gradient(S)``). Works for any discrete kind whose elements are what
    :meth:`GroupKind.maximize_trace` returns; a kind that is not self-dual overrides
    :meth:`dual_matrix` (a semi-permutation divides by its copy counts).

    >>> from symdsl.groups.permutation import Permutation
    >>> p = StraightThrough(Permutation(), torch.tensor([1, 0]))
    >>> p.dense()[1].detach()
    tensor([[0., 1.],
            [1., 0.]], dtype=torch.float64)
    """

    lr_scale = 10.0
    straight_through = True

    def __init__(self, kind: GroupKind, g0: Tensor, *, options: Mapping[str, object] | None = None,
                 n_in: int | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.kind = kind
        self.options = dict(options or {})
        dtype = dtype or (g0.dtype if g0.is_floating_point() else torch.float64)
        matrix = g0.to(dtype) if g0.is_floating_point() else kind.to_matrix(g0, dtype=dtype, n_in=n_in)
        self.n_in = matrix.shape[-1]
        self.scores = torch.nn.Parameter(matrix.detach().clone())      # (..., n_out, n_in)

    def element(self) -> Tensor:
        return self.kind.maximize_trace(self.scores.detach(), options=self.options)

    def hard_matrix(self) -> Tensor:
        """The dense matrix of the current hard element, in the scores' dtype (no gradient)."""
        g = self.element()
        if g.is_floating_point():
            return g.to(self.scores.dtype)
        return self.kind.to_matrix(g, dtype=self.scores.dtype, n_in=self.n_in)

    def dual_matrix(self, matrix: Tensor, hard: Tensor) -> Tensor:
        """The dual of the straight-through ``matrix`` (value ``hard``); self-dual kinds: itself."""
        if not self.kind.self_dual:
            raise NotImplementedError(f"straight-through {self.kind.name} needs a dual_matrix rule "
                                      "(the kind is not self-dual)")
        return matrix

    def dense(self):
        hard = self.hard_matrix()
        matrix = hard + self.scores - self.scores.detach()   # value: hard; gradient: to the scores
        return matrix, self.dual_matrix(matrix, hard)
