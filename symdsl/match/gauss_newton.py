"""Gauss-Newton for an invertible site fitted on both sides:  min_g  sum_p ||A_p - g B_p||^2 + sum_d ||A_d - g^-T B_d||^2.

Weight matching's invertible sites (per-head maps of queries/keys, values/outputs) act as g on
their primal tensors and as h = g^-T on their dual ones. Everything is written in the k x k
Gram matrices of :class:`~symdsl.match.solvers.Gram` (batched over heads, (..., k, k)):
with P = B_p B_p^T, R_p = A_p B_p^T, Q = B_d B_d^T, R_d = A_d B_d^T,

    f(g) = <g P, g> - 2 <g, R_p> + <h Q, h> - 2 <h, R_d> + const.

Why Gauss-Newton: the primal residual is linear in g; the dual one is linear in h, and
h(g + D) = h - h D^T h + O(D^2). Linearising h gives a quadratic model whose normal equations
are the generalised Sylvester equation

    D P + S D M = -grad / 2,     S = h Q h^T (dual Gram seen through h),  M = h^T h,

solved exactly in O(k^3) per head by diagonalising the pencil (P, M) (P V = M V L, V^T M V = I)
and S (S = W E W^T):  D = W [(W^T C V) / (E_i + L_j)] V^T. Each iteration is a handful of
batched k x k factorisations instead of the tens of small ops per step of an L-BFGS two-loop
recursion, and it converges in a few steps where the fit is nearly exact (recoveries) and
linearly otherwise. Heads are independent, so each takes its own backtracking step (Armijo on
its own objective) and stops on its own.
"""
from __future__ import annotations

import torch

from .solvers import Gram


def head_objective(g: torch.Tensor, primal: Gram | None, dual: Gram | None) -> torch.Tensor:
    """(...,) the part of f(g) that depends on g, per head (the norms are left out); inf where g is singular.

    >>> a = torch.randn(2, 3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> g = 2 * torch.eye(3, dtype=torch.float64).expand(2, 3, 3)
    >>> gram = Gram.of([(a, a)])
    >>> values = head_objective(g, gram, None) + (a * a).sum((-1, -2))
    >>> torch.allclose(values, ((a - g @ a) ** 2).sum((-1, -2)))
    True
    """
    value = torch.zeros(g.shape[:-2], dtype=g.dtype, device=g.device)
    if primal is not None:
        value = value + ((g @ primal.bb) * g).sum((-1, -2)) - 2 * (g * primal.ab).sum((-1, -2))
    if dual is not None:
        inverse, singular = torch.linalg.inv_ex(g)
        h = inverse.mT
        value = value + ((h @ dual.bb) * h).sum((-1, -2)) - 2 * (h * dual.ab).sum((-1, -2))
        value = torch.where(singular == 0, value, torch.full_like(value, float("inf")))
    return torch.where(torch.isfinite(value), value, torch.full_like(value, float("inf")))


class _Sylvester:
    """The Gauss-Newton operator at g, D -> 2 (D P + S D M), factorised once so it can be inverted cheaply.

    With M = L L^T and L^-1 P L^-T = U diag(lam) U^T, V = L^-T U diagonalises the pencil
    (P V = M V diag(lam), V^T M V = I); S = W diag(e) W^T. Then D P + S D M = C has the solution
    D = W [(W^T C V) / (e_i + lam_j)] V^T: four (..., k, k) matmuls per solve.
    """

    def __init__(self, p: torch.Tensor, s: torch.Tensor, m: torch.Tensor):
        chol = torch.linalg.cholesky(m)
        half = torch.linalg.solve_triangular(chol, p, upper=False)                  # L^-1 P
        p_tilde = torch.linalg.solve_triangular(chol, half.mT, upper=False)         # L^-1 P L^-T
        lam, u = torch.linalg.eigh((p_tilde + p_tilde.mT) / 2)
        self.v = torch.linalg.solve_triangular(chol.mT, u, upper=True)              # L^-T U
        e, self.w = torch.linalg.eigh((s + s.mT) / 2)
        denom = e.unsqueeze(-1) + lam.unsqueeze(-2)                                # (..., k, k): e_i + lam_j >= 0
        # a direction the model does not curve along (rank-deficient heads) gets a bounded step, not 1/0
        floor = 1e-12 * denom.abs().amax(dim=(-1, -2), keepdim=True).clamp_min(1e-300)
        self.denom = 2 * denom.clamp_min(floor)

    def solve(self, c: torch.Tensor) -> torch.Tensor:
        """D with 2 (D P + S D M) = c."""
        return self.w @ ((self.w.mT @ c @ self.v) / self.denom) @ self.v.mT


def gauss_newton_step(g: torch.Tensor, primal: Gram, dual: Gram, newton_iter: int = 0
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(D, grad)``: a descent step at an invertible g (batched over heads) and f's gradient there.

    ``newton_iter = 0``: the Gauss-Newton step (one generalised Sylvester solve). Otherwise up
    to that many conjugate-gradient iterations on the exact Newton system H D = -grad,
    preconditioned by the Gauss-Newton operator: the dual residual's curvature through
    h = g^-T, which Gauss-Newton drops, matters when the fit is far from exact (unrelated
    models), where Gauss-Newton alone converges only linearly.

    >>> x = torch.randn(1, 2, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    >>> target = torch.tensor([[[2.0, 1.0], [0.0, 1.0]]], dtype=torch.float64)
    >>> primal, dual = Gram.of([(target @ x, x)]), Gram.of([(torch.linalg.inv(target).mT @ x, x)])
    >>> g = torch.eye(2, dtype=torch.float64)[None]
    >>> for _ in range(8):
    ...     step, _ = gauss_newton_step(g, primal, dual)
    ...     g = g + step
    >>> torch.allclose(g, target)
    True
    """
    h = torch.linalg.inv(g).mT
    hq = h @ dual.bb
    twice_g = 2 * (hq - dual.ab)                                                    # d f_dual / d h
    grad = 2 * (g @ primal.bb - primal.ab) - h @ twice_g.mT @ h                     # (..., k, k)
    operator = _Sylvester(primal.bb, hq @ h.mT, h.mT @ h)                           # S = h Q h^T, M = h^T h
    if newton_iter <= 0:
        return operator.solve(-grad), grad

    def hessian(d: torch.Tensor) -> torch.Tensor:
        # d/dt grad(g + t d):  dh = -h d^T h,  d(h A^T h) = dh A^T h + h dA^T h + h A^T dh
        dh = -h @ d.mT @ h
        return 2 * d @ primal.bb - (dh @ twice_g.mT @ h + h @ (2 * dh @ dual.bb).mT @ h + h @ twice_g.mT @ dh)

    def dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (x * y).sum((-1, -2), keepdim=True)                                  # per head

    step = torch.zeros_like(g)
    residual = -grad
    z = operator.solve(residual)
    direction = z
    rz = dot(residual, z)
    active = torch.ones_like(rz, dtype=torch.bool)
    first = z                                            # fallback for a head with no positive curvature
    start_norm = rz.abs().sqrt()
    for _ in range(newton_iter):
        hd = hessian(direction)
        curve = dot(direction, hd)
        # negative curvature: stop that head where it is (Steihaug); at the start, take the GN step
        stop = active & (curve <= 0)
        step = torch.where(stop & (step == 0).all(-1, keepdim=True).all(-2, keepdim=True), first, step)
        active = active & ~stop
        alpha = torch.where(active, rz / torch.where(active, curve, torch.ones_like(curve)), torch.zeros_like(rz))
        step = step + alpha * direction
        residual = residual - alpha * hd
        z = operator.solve(residual)
        rz_new = dot(residual, z)
        # forcing term: an inexact Newton step is enough far away, an exact one near the optimum
        active = active & (rz_new.abs().sqrt() > torch.minimum(start_norm.sqrt(), torch.full_like(start_norm, 0.1))
                           * start_norm)
        if not bool(active.any()):
            break
        beta = rz_new / torch.where(rz == 0, torch.ones_like(rz), rz)
        direction = z + beta * direction
        rz = rz_new
    return step, grad


def refine_gauss_newton(start: torch.Tensor, primal: Gram, dual: Gram, *, max_iter: int = 50,
                        tol: float = 1e-12, min_step: float = 2.0 ** -30, newton_iter: int = 0
                        ) -> tuple[torch.Tensor, int]:
    """Gauss-Newton with a backtracking line search per head; returns ``(g, iterations)``.

    Never increases any head's objective (a head whose step fails keeps its element); stops when
    the total objective (norms included) falls by less than ``tol`` relative in one iteration,
    or after ``max_iter`` iterations.

    >>> gen = torch.Generator().manual_seed(3)
    >>> x, y = (torch.randn(4, 3, 9, dtype=torch.float64, generator=gen) for _ in range(2))
    >>> target = torch.eye(3, dtype=torch.float64) + 0.3 * torch.randn(4, 3, 3, dtype=torch.float64, generator=gen)
    >>> primal, dual = Gram.of([(target @ x, x)]), Gram.of([(torch.linalg.inv(target).mT @ y, y)])
    >>> g, steps = refine_gauss_newton(torch.eye(3, dtype=torch.float64).expand(4, 3, 3), primal, dual)
    >>> torch.allclose(g, target), steps < 20
    (True, True)
    """
    g = start.clone()
    norms = primal.norm + dual.norm
    current = head_objective(g, primal, dual)
    iterations = 0
    for iterations in range(1, max_iter + 1):
        try:
            step, grad = gauss_newton_step(g, primal, dual, newton_iter)
        except RuntimeError:        # a factorisation failed (g numerically singular): keep what we have
            break
        slope = (grad * step).sum((-1, -2))                                         # (...,) < 0 downhill
        t = torch.ones_like(current)
        pending = torch.isfinite(slope) & (slope < 0)
        trial_best = current.clone()
        moved = g.clone()
        while bool(pending.any()):
            trial = g + t[..., None, None] * step
            values = head_objective(trial, primal, dual)
            accept = pending & (values <= current + 1e-4 * t * slope)
            moved = torch.where(accept[..., None, None], trial, moved)
            trial_best = torch.where(accept, values, trial_best)
            pending = pending & ~accept
            t = torch.where(pending, t / 2, t)
            pending = pending & (t >= min_step)
        decrease = float((current - trial_best).sum())
        total = float(norms + trial_best.sum())
        g, current = moved, trial_best
        if decrease <= tol * max(abs(total), 1e-300):
            break
    return g, iterations
