"""Newton refinement of invertible sites (symdsl.match.gauss_newton, ``invertible_solver=newton``).

Checked against L-BFGS (the default refinement) and against an independent optimum: scipy's BFGS
on the objective written on the weights themselves (not the Gram form), per head, in float64.
"""
from __future__ import annotations

import pytest
import scipy.optimize
import torch

from conftest import REGISTRIES, canonical_example, relative_distance
from symdsl.act import act_state_dict, random_transform
from symdsl.groups import get_group_kind
from symdsl.match.gauss_newton import gauss_newton_step, head_objective, refine_gauss_newton
from symdsl.match.refine import refine_lbfgs
from symdsl.match.solvers import Gram, gram_gradient, gram_objective, least_squares_candidates
from symdsl_builtins.matchers.weight import LBFGS_HISTORY

F64 = torch.float64


def _problem(seed: int, noise: float, heads: int = 3, k: int = 4, width: int = 12):
    """Primal / dual pairs (heads, k, width) related by a hidden g (plus noise) and their Gram matrices."""
    gen = torch.Generator().manual_seed(seed)
    x, y = (torch.randn(heads, k, width, dtype=F64, generator=gen) for _ in range(2))
    g = torch.eye(k, dtype=F64) + 0.4 * torch.randn(heads, k, k, dtype=F64, generator=gen) / k ** 0.5
    ap = g @ x + noise * torch.randn(heads, k, width, dtype=F64, generator=gen)
    ad = torch.linalg.inv(g).mT @ y + noise * torch.randn(heads, k, width, dtype=F64, generator=gen)
    return (ap, x), (ad, y), g


def _weights_objective(primal, dual, g: torch.Tensor) -> torch.Tensor:
    """Per head ||A_p - g B_p||^2 + ||A_d - g^-T B_d||^2, on the weights."""
    (ap, x), (ad, y) = primal, dual
    return ((ap - g @ x) ** 2).sum((-1, -2)) + ((ad - torch.linalg.inv(g).mT @ y) ** 2).sum((-1, -2))


def _scipy_optimum(primal, dual, start: torch.Tensor) -> torch.Tensor:
    """Per head: scipy BFGS on the weights' objective (autograd gradient), tight tolerance."""
    out = []
    for head in range(start.shape[0]):
        p = tuple(t[head:head + 1] for t in primal)
        d = tuple(t[head:head + 1] for t in dual)
        k = start.shape[-1]

        def fun(flat):
            g = torch.tensor(flat, dtype=F64).reshape(1, k, k).requires_grad_(True)
            value = _weights_objective(p, d, g).sum()
            value.backward()
            return float(value.detach()), g.grad.reshape(-1).numpy().copy()

        found = scipy.optimize.minimize(fun, start[head].reshape(-1).numpy(), jac=True, method="BFGS",
                                        options={"gtol": 1e-11, "maxiter": 10000})
        out.append(torch.tensor(found.x, dtype=F64).reshape(k, k))
    return torch.stack(out)


def test_newton_cg_step_solves_the_newton_system_inexactly_and_converges_fast():
    """Near the optimum of a noiseless head: the step solves H D = -grad (H from autograd) up to
    CG's forcing term, and brings g much closer to the hidden element than Gauss-Newton alone."""
    primal, dual, target = _problem(0, 0.0, heads=1)
    gram_p, gram_d = Gram.of([primal], with_aa=False), Gram.of([dual])
    g = target + 1e-3 * torch.randn(target.shape, dtype=F64, generator=torch.Generator().manual_seed(1))
    step, grad = gauss_newton_step(g, gram_p, gram_d, newton_iter=40)
    x = g.clone().requires_grad_(True)
    first, = torch.autograd.grad(gram_objective(gram_p, gram_d)(x), x, create_graph=True)
    hessian = torch.stack([torch.autograd.grad(first.reshape(-1)[i], x, retain_graph=True)[0].reshape(-1)
                           for i in range(16)])
    torch.testing.assert_close(grad.reshape(-1), first.detach().reshape(-1), rtol=1e-10, atol=1e-10)
    residual = hessian @ step.reshape(-1) + grad.reshape(-1)
    assert float(residual.norm() / grad.norm()) < 0.1
    gn_step, _ = gauss_newton_step(g, gram_p, gram_d)
    before = float((g - target).norm())
    assert float((g + step - target).norm()) < 0.05 * before
    assert float((g + gn_step - target).norm()) < before


def test_newton_recovers_a_hidden_element_exactly():
    primal, dual, target = _problem(2, 0.0, heads=5, k=6, width=20)
    start = torch.eye(6, dtype=F64).expand(5, 6, 6)
    for newton_iter in (0, 20):                          # Gauss-Newton alone and Newton-CG
        g, steps = refine_gauss_newton(start, Gram.of([primal], with_aa=False), Gram.of([dual]),
                                       newton_iter=newton_iter)
        assert float((g - target).norm() / target.norm()) < 1e-10
        assert steps < 25


@pytest.mark.parametrize("noise", [0.1, 1.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_newton_reaches_the_independent_optimum_and_beats_fifty_lbfgs_steps(seed, noise):
    """From the best closed form (what the matcher starts from): Newton's objective is no worse
    than 50 L-BFGS steps' (the default) and equals scipy's optimum on the weights within 1e-9."""
    primal, dual, _ = _problem(seed, noise)
    gram_p, gram_d = Gram.of([primal], with_aa=False), Gram.of([dual])
    loss = gram_objective(gram_p, gram_d)
    start = min(least_squares_candidates(gram_p, gram_d), key=lambda c: float(loss(c)))
    newton, _ = refine_gauss_newton(start, gram_p, gram_d, max_iter=50, newton_iter=20)
    lbfgs, _ = refine_lbfgs(start, loss, get_group_kind("invertible"), max_iter=50, history_size=LBFGS_HISTORY,
                            gradient=gram_gradient(gram_p, gram_d))
    optimum = _scipy_optimum(primal, dual, start)
    f_newton, f_lbfgs, f_opt = (float(_weights_objective(primal, dual, g).sum()) for g in (newton, lbfgs, optimum))
    assert f_newton <= f_lbfgs * (1 + 1e-12)
    assert f_newton <= f_opt * (1 + 1e-9)
    assert f_newton < float(_weights_objective(primal, dual, start).sum())


def test_head_objective_is_the_objective_on_the_weights_and_infinite_when_singular():
    primal, dual, target = _problem(4, 0.5)
    gram_p, gram_d = Gram.of([primal], with_aa=False), Gram.of([dual])
    norms = (primal[0] ** 2).sum((-1, -2)) + (dual[0] ** 2).sum((-1, -2))
    torch.testing.assert_close(head_objective(target, gram_p, gram_d) + norms, _weights_objective(primal, dual, target))
    singular = target.clone()
    singular[1] = 0
    values = head_objective(singular, gram_p, gram_d)
    assert torch.isinf(values[1]) and torch.isfinite(values[[0, 2]]).all()


def test_weight_matching_with_newton_recovers_a_hidden_element_and_is_no_worse_on_unrelated_models():
    _, model, resolved = canonical_example("hf-gpt2")
    a = model.state_dict()
    b = act_state_dict(resolved, a, random_transform(resolved, seed=5))
    matcher = REGISTRIES.matchers.lookup("weight")
    result = matcher.match(resolved, a, b, invertible_solver="newton")
    assert relative_distance(resolved, act_state_dict(resolved, b, result.elements), a) < 1e-6
    _, other, _ = canonical_example("hf-gpt2", seed=1)
    b = other.state_dict()
    newton = matcher.match(resolved, a, b, invertible_solver="newton", max_iter=3, tol=0.0)
    lbfgs = matcher.match(resolved, a, b, max_iter=3, tol=0.0)
    assert newton.objective[-1] <= lbfgs.objective[-1] * (1 + 1e-3)
    assert all(x >= y - 1e-9 * abs(x) for x, y in zip(newton.objective, newton.objective[1:]))


def test_unknown_invertible_solver_is_a_usage_error_naming_the_choices():
    from symdsl.errors import UsageError

    _, model, resolved = canonical_example("hf-gpt2")
    a = model.state_dict()
    with pytest.raises(UsageError, match=r"invertible_solver='bfgs' must be 'lbfgs' or 'newton'"):
        REGISTRIES.matchers.lookup("weight").match(resolved, a, a, invertible_solver="bfgs")
