"""A group kind that lives only in this plugin: signed permutations.

An element is a permutation matrix whose rows may be negated, ``g = D P`` with D diagonal
of +-1: output a is ``s_a x[p(a)]``. It is a true symmetry wherever a unit can be moved and
flipped without changing the function: the hidden units of an odd activation (tanh), or a
per-head query/key basis (``q -> g q``, ``k -> g k``, and ``q . k`` is unchanged because g is
orthogonal). It is isometric, not elementwise equivariant (a sign does not commute with GELU)
and does not fix the all-ones vector, and symdsl learns all that from the kind itself: the core
has no line about it.

>>> import torch
>>> k = SignedPermutation()
>>> g = torch.tensor([[0.0, -1.0], [1.0, 0.0]])
>>> k.apply(g, torch.tensor([3.0, 5.0]), dim=0)
tensor([-5.,  3.])
>>> k.contains(g), k.contains(2 * g)
(True, False)
"""
from __future__ import annotations

import torch

from symdsl.groups.base import MatrixGroupKind
from symdsl.groups.plumbing import Tensor, batch_shape, generator_device
from symdsl.groups.parametrizations import StraightThrough
from symdsl.groups.permutation import Permutation, PermutationMatrix


def signed_matrix(index: Tensor, signs: Tensor) -> Tensor:
    """The matrix with ``signs[a]`` at ``(a, index[a])`` and zeros elsewhere (no negative zeros).

    >>> signed_matrix(torch.tensor([1, 0]), torch.tensor([-1.0, 1.0])).tolist()
    [[0.0, -1.0], [1.0, 0.0]]
    """
    matrix = torch.zeros(*index.shape, index.shape[-1], dtype=signs.dtype, device=signs.device)
    return matrix.scatter_(-1, index.unsqueeze(-1), signs.unsqueeze(-1))


class SignedPermutation(MatrixGroupKind):
    """Signed permutation matrices ``(..., n, n)``: the hyperoctahedral group, as dense matrices.

    >>> k = SignedPermutation()
    >>> k.maximize_trace(torch.tensor([[0.2, -3.0], [0.5, 0.1]]))
    tensor([[ 0., -1.],
            [ 1.,  0.]])
    """

    name = "signed_permutation"
    isometric = True                 # an orthogonal matrix
    elementwise_equivariant = False  # a sign flip does not commute with GELU
    discrete = True                  # finitely many elements: trace maximisation is an assignment
    square = True
    self_dual = True                 # g^-T = g for an orthogonal g
    options: dict[str, tuple] = {}

    def random(self, n_out, n_in=None, batch=(), *, options=None, generator=None,
               dtype=torch.float64, device=None) -> Tensor:
        """A uniformly random permutation with independent random signs per row.

        >>> g = SignedPermutation().random(4, generator=torch.Generator().manual_seed(0))
        >>> g.abs().sum(0).tolist(), SignedPermutation().contains(g)
        ([1.0, 1.0, 1.0, 1.0], True)
        """
        self.validate_options(options)
        n, _ = self._sizes(n_out, n_in)
        batch = batch_shape(batch)
        index = Permutation().random(n, batch=batch, generator=generator, device=device)     # (*batch, n)
        flips = torch.randint(0, 2, (*batch, n), generator=generator,
                              device=generator_device(generator, device)).to(device=device, dtype=dtype)
        return signed_matrix(index, 1 - 2 * flips)            # row a negated where flips[a] = 1

    def dual(self, g: Tensor, *, n_in: int | None = None) -> Tensor:
        """``g`` itself (orthogonal)."""
        self._check_n_in(g, n_in)
        return g

    def inverse(self, g: Tensor) -> Tensor:
        """The transpose.

        >>> SignedPermutation().inverse(torch.tensor([[0.0, -1.0], [1.0, 0.0]])).tolist()
        [[0.0, 1.0], [-1.0, 0.0]]
        """
        return g.mT

    def contains(self, g, options=None, atol: float = 1e-8, *, n_in: int | None = None) -> bool:
        """True if ``|g|`` is a permutation matrix (so every entry is 0 or +-1).

        >>> SignedPermutation().contains(-torch.eye(3)), SignedPermutation().contains(torch.ones(2, 2))
        (True, False)
        """
        self.validate_options(options)
        return isinstance(g, Tensor) and PermutationMatrix().contains(g.abs(), atol=atol, n_in=n_in)

    def project(self, m: Tensor, *, options=None) -> Tensor:
        """The nearest signed permutation in Frobenius norm, which also maximises ``tr(g^T m)``.

        ``tr(g^T m) = sum_a s_a m[a, p(a)]`` is largest with ``s_a = sign m[a, p(a)]``, leaving
        ``sum_a |m[a, p(a)]|``: an assignment on ``|m|``.

        >>> SignedPermutation().project(torch.tensor([[-2.0, 0.1], [0.3, 0.2]])).tolist()
        [[-1.0, 0.0], [0.0, 1.0]]
        """
        self.validate_options(options)
        if m.dim() < 2 or m.shape[-1] != m.shape[-2]:
            raise ValueError(f"signed_permutation.project needs square matrices (..., n, n), got {tuple(m.shape)}")
        index = Permutation().project(m.abs())                              # (..., n): input of each output
        picked = m.gather(-1, index.unsqueeze(-1)).squeeze(-1)              # (..., n)
        return signed_matrix(index, torch.where(picked < 0, -1.0, 1.0).to(m.dtype))

    def permutation_restriction(self, options=None) -> PermutationMatrix:
        """Plain permutation matrices: the signed permutations whose signs are all +1."""
        return PermutationMatrix()

    def parametrize(self, g0: Tensor, *, options=None, n_in: int | None = None):
        """Straight-through: hard signed permutation forward, gradient to a score matrix."""
        self.validate_options(options)
        return StraightThrough(self, g0, options=options)
