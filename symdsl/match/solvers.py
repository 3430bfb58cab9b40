"""Solvers for weight matching's per-site steps.

- ``max_g tr(g^T C)``, the linear step of every kind without ``least_squares_fit``, is the
  kind's own :meth:`~symdsl.groups.GroupKind.maximize_trace` (assignment for permutations,
  surjective assignment for copy maps, Procrustes for orthogonal and Stiefel maps);
  :func:`maximize_trace` calls it;
- kinds with ``least_squares_fit`` (invertible: g on some tensors, g^-T on others): closed
  forms and an objective computed from Gram matrices (:class:`Gram`), for L-BFGS to refine.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..groups.base import GroupKind


def maximize_trace(kind: GroupKind, c: torch.Tensor, options: dict | None = None) -> torch.Tensor:
    """argmax over the group of tr(g^T C); ``c`` is (..., n_out, n_in), batched over leading dims.

    >>> from symdsl.groups.permutation import Permutation
    >>> maximize_trace(Permutation(), torch.tensor([[0., 5.], [4., 1.]]))
    tensor([1, 0])
    """
    return kind.maximize_trace(c, options=options or {})


# -- invertible sites: least squares from Gram matrices -------------------------------------------
#
# An invertible site g acts as g on its primal occurrences and as g^-T on its dual ones, so weight
# matching minimises  sum_p ||A_p - g B_p||^2 + sum_d ||A_d - g^-T B_d||^2  (batched over heads).
# Every quantity the solvers need is a k x k Gram matrix of the unfolded pairs (..., k, M):
#   ||A - h B||^2 = ||A||^2 - 2 <h, A B^T> + <h B B^T, h>,
# so the pairs (M = model width) are reduced once and the solvers work on (..., k, k) only.


@dataclass
class Gram:
    """The Gram matrices of one side (primal or dual) of an invertible site, summed over its pairs.

    ``ab`` = sum A B^T, ``bb`` = sum B B^T, ``aa`` = sum A A^T (each (..., k, k); ``aa`` only
    when asked for, the dual side's Sylvester fit needs it) and ``norm`` = sum ||A||^2 (0-dim).

    >>> a, b = torch.eye(2, dtype=torch.float64)[None], 2 * torch.eye(2, dtype=torch.float64)[None]
    >>> g = Gram.of([(a, b)])
    >>> g.ab[0].tolist(), float(g.norm)
    ([[2.0, 0.0], [0.0, 2.0]], 2.0)
    """

    ab: torch.Tensor
    bb: torch.Tensor
    aa: torch.Tensor | None
    norm: torch.Tensor

    @staticmethod
    def of(pairs, with_aa: bool = True) -> "Gram":
        """Sum the Gram matrices over ``pairs`` of unfolded tensors ``(a, b)``, each (..., k, M)."""
        ab = sum(a @ b.mT for a, b in pairs)
        bb = sum(b @ b.mT for _, b in pairs)
        aa = sum(a @ a.mT for a, _ in pairs) if with_aa else None
        norm = aa.diagonal(dim1=-2, dim2=-1).sum() if aa is not None else sum((a * a).sum() for a, _ in pairs)
        return Gram(ab, bb, aa, norm)

    def to(self, device) -> "Gram":
        """The same Gram matrices on ``device``."""
        aa = None if self.aa is None else self.aa.to(device)
        return Gram(self.ab.to(device), self.bb.to(device), aa, self.norm.to(device))


def gram_objective(primal: Gram | None, dual: Gram | None):
    """The least-squares objective of an invertible site as a function of g, from Gram matrices only.

    Cheap (k x k work per head) and differentiable, so L-BFGS can iterate on it; it loses the
    last digits when the fit is nearly exact (a difference of large numbers), so callers
    re-measure the chosen element on the pairs themselves.

    >>> a = torch.randn(1, 3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> g = torch.eye(3, dtype=torch.float64)[None] * 2
    >>> loss = gram_objective(Gram.of([(a, a)]), None)
    >>> bool(torch.isclose(loss(g), ((a - g @ a) ** 2).sum()))
    True
    """
    def loss(g: torch.Tensor) -> torch.Tensor:
        total = g.new_zeros(())
        if primal is not None:
            total = total + primal.norm - 2 * (g * primal.ab).sum() + ((g @ primal.bb) * g).sum()
        if dual is not None:
            h = torch.linalg.inv(g).mT
            total = total + dual.norm - 2 * (h * dual.ab).sum() + ((h @ dual.bb) * h).sum()
        return total

    return loss


def gram_gradient(primal: Gram | None, dual: Gram | None):
    """``g -> (objective, gradient)`` of :func:`gram_objective` in closed form (no autograd).

    With P = B_p B_p^T and h = g^-T:  d/dg <g P, g> - 2 <g, A_p B_p^T> = 2 (g P - A_p B_p^T), and
    the dual side's gradient G_h = 2 (h P_d - A_d B_d^T) in h pulls back through dh = -h dg^T h
    to  -h G_h^T h.

    >>> gen = torch.Generator().manual_seed(0)
    >>> a, b = (torch.randn(2, 3, 6, dtype=torch.float64, generator=gen) for _ in range(2))
    >>> g = torch.eye(3, dtype=torch.float64) + 0.1 * torch.randn(2, 3, 3, dtype=torch.float64, generator=gen)
    >>> value, grad = gram_gradient(Gram.of([(a, b)]), Gram.of([(b, a)]))(g)
    >>> x = g.clone().requires_grad_(True)
    >>> gram_objective(Gram.of([(a, b)]), Gram.of([(b, a)]))(x).backward()
    >>> torch.allclose(grad, x.grad)
    True
    """
    def value_and_gradient(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        value = g.new_zeros(())
        grad = torch.zeros_like(g)
        if primal is not None:
            gp = g @ primal.bb                                          # (..., k, k)
            value = value + primal.norm - 2 * (g * primal.ab).sum() + (gp * g).sum()
            grad = grad + 2 * (gp - primal.ab)
        if dual is not None:
            h = torch.linalg.inv(g).mT
            hp = h @ dual.bb
            value = value + dual.norm - 2 * (h * dual.ab).sum() + (hp * h).sum()
            grad = grad - h @ (2 * (hp - dual.ab)).mT @ h
        return value, grad

    return value_and_gradient


def _ridge_solve(ab: torch.Tensor, bb: torch.Tensor) -> torch.Tensor:
    """h minimising ||A - h B||^2:  h = (A B^T)(B B^T)^-1, with a 1e-12 relative ridge against rank loss."""
    eye = torch.eye(bb.shape[-1], dtype=bb.dtype, device=bb.device)
    return torch.linalg.solve(bb + 1e-12 * bb.diagonal(dim1=-2, dim2=-1).mean() * eye, ab.mT).mT


def sylvester_fit(primal: Gram, dual: Gram) -> torch.Tensor:
    """Closed-form g for  sum ||g B_p - A_p||^2 + sum ||g^T A_d - B_d||^2.

    The dual residual A_d - g^-T B_d, multiplied by g^T, becomes linear in g; the normal
    equations are the Sylvester equation  g P + Q g = R  with P = B_p B_p^T, Q = A_d A_d^T
    (both symmetric PSD, batched per head), solved in the eigenbases of P and Q.
    Exact when a g fits both sides exactly (a recovery problem).

    >>> x = torch.randn(1, 2, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    >>> g = torch.tensor([[[2.0, 1.0], [0.0, 1.0]]], dtype=torch.float64)
    >>> fit = sylvester_fit(Gram.of([(g @ x, x)]), Gram.of([(x, g.mT @ x)]))
    >>> torch.allclose(fit, g)
    True
    """
    p_val, p_vec = torch.linalg.eigh(primal.bb)
    q_val, q_vec = torch.linalg.eigh(dual.aa)
    r = primal.ab + dual.ab
    denom = q_val.unsqueeze(-1) + p_val.unsqueeze(-2)     # (..., k, k): q_i + p_j
    floor = 1e-12 * denom.abs().amax(dim=(-1, -2), keepdim=True).clamp_min(1e-300)
    core = (q_vec.mT @ r @ p_vec) / denom.clamp_min(floor)
    return q_vec @ core @ p_vec.mT


def least_squares_candidates(primal: Gram | None, dual: Gram | None) -> list[torch.Tensor]:
    """Closed-form starts for an invertible site: the g-side fit, the Sylvester fit, the g^-T-side fit.

    Each is optimal for its own side (or for the linearised two-sided problem); the caller
    scores them on the true objective. A dual fit that is singular is left out.

    >>> x = torch.randn(2, 3, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    >>> g = torch.eye(3, dtype=torch.float64).expand(2, 3, 3) * 3
    >>> [torch.allclose(c, g) for c in least_squares_candidates(Gram.of([(g @ x, x)]), Gram.of([(x / 3, x)]))]
    [True, True, True]
    """
    out = []
    if primal is not None:
        out.append(_ridge_solve(primal.ab, primal.bb))
    if primal is not None and dual is not None:
        out.append(sylvester_fit(primal, dual))
    if dual is not None:
        h = _ridge_solve(dual.ab, dual.bb)
        if torch.isfinite(h).all() and torch.linalg.matrix_rank(h).min() == h.shape[-1]:
            out.append(torch.linalg.inv(h).mT)
    return out
