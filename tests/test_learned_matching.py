"""Learned matching: parametrisations, the differentiable action, the path loss and the matcher."""
from __future__ import annotations

import pytest
import torch

from conftest import SHIPPED, canonical_example, relative_distance
from symdsl.act import act_state_dict, random_transform
from symdsl.data import load_dataset
from symdsl.errors import UsageError
from symdsl.groups.invertible import FreeInvertible, Invertible
from symdsl.groups.orthogonal import CayleyOrthogonal, Orthogonal
from symdsl.groups.parametrizations import cayley
from symdsl.groups.permutation import Permutation, StraightThroughPermutation
from symdsl.groups.semi_permutation import SemiPermutation, StraightThroughSemiPermutation
from symdsl.groups.stiefel import CayleyStiefel, Stiefel
from symdsl.learn import PathLoss, act_dense, parse_sampler
from symdsl.learn.loop import validation_objective

F64 = torch.float64
KINDS = {k.name: k for k in (Permutation(), SemiPermutation(), Orthogonal(), Stiefel(), Invertible())}


def _random_generator(p, seed=0, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in p.parameters():
            t.copy_(scale * torch.randn(t.shape, generator=g, dtype=t.dtype))


# ----------------------------------------------------------------------------- parametrisations


@pytest.mark.parametrize("preserve", [False, True])
def test_cayley_orthogonal_stays_in_the_group(preserve):
    start = Orthogonal().random(6, options={"preserve": "ones"} if preserve else None,
                                                generator=torch.Generator().manual_seed(1))
    p = CayleyOrthogonal(start, preserve_ones=preserve)
    assert torch.equal(p.element(), start)            # the generator starts at 0: g = g0 exactly
    _random_generator(p)
    g = p.element()
    options = {"preserve": "ones"} if preserve else None
    assert Orthogonal().contains(g, options=options)
    primal, dual = p.dense()
    assert torch.equal(primal, dual)
    if preserve:
        torch.testing.assert_close(g @ torch.ones(6, dtype=F64), torch.ones(6, dtype=F64))


def test_cayley_matches_its_closed_form_in_two_dimensions():
    # For A = [[0, t], [-t, 0]], (I - A)^-1 (I + A) is the rotation by angle 2 atan(t).
    t = 0.7
    q = cayley(torch.tensor([[0.0, t], [-t, 0.0]], dtype=F64))
    angle = 2 * torch.atan(torch.tensor(t, dtype=F64))
    expected = torch.stack([torch.stack([torch.cos(angle), torch.sin(angle)]),
                            torch.stack([-torch.sin(angle), torch.cos(angle)])])
    torch.testing.assert_close(q, expected)


@pytest.mark.parametrize("make", [
    lambda: CayleyOrthogonal(torch.eye(4, dtype=F64), preserve_ones=True),
    lambda: CayleyOrthogonal(torch.eye(4, dtype=F64)),
    lambda: CayleyStiefel(torch.eye(5, 3, dtype=F64)),
    lambda: FreeInvertible(Invertible().random(3, batch=(2,), generator=torch.Generator().manual_seed(2))),
], ids=["orthogonal-ones", "orthogonal", "stiefel", "invertible"])
def test_parametrisation_gradients_match_finite_differences(make):
    p = make()
    if not isinstance(p, FreeInvertible):
        _random_generator(p, seed=3, scale=0.2)
    (name, param), = list(p.named_parameters())
    weights = torch.randn(*p.dense()[0].shape, generator=torch.Generator().manual_seed(4), dtype=F64)

    def objective(value):   # a smooth scalar of both matrices; forward() is dense()
        primal, dual = torch.func.functional_call(p, {name: value}, ())
        return (weights * primal).sum() + (weights * dual).sum() ** 2

    x = param.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(objective, (x,), eps=1e-6, atol=1e-6)


def test_straight_through_permutation_is_hard_forward_and_identity_backward():
    scores_start = torch.tensor([2, 0, 3, 1])
    p = StraightThroughPermutation(scores_start)
    primal, dual = p.dense()
    assert torch.equal(primal.detach(), Permutation().to_matrix(scores_start))
    assert primal is dual
    weights = torch.randn(4, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
    (weights * primal).sum().backward()
    torch.testing.assert_close(p.scores.grad, weights)       # d/dS of <W, P> is W: straight through
    with torch.no_grad():                                    # scores now favour another assignment
        p.scores.copy_(Permutation().to_matrix(torch.tensor([1, 0, 3, 2])) * 5 + 0.01 * weights)
    assert p.element().tolist() == [1, 0, 3, 2]
    assert Permutation().contains(p.element())


def test_straight_through_semi_permutation_divides_the_dual_by_copy_counts():
    kind = SemiPermutation()
    g0 = torch.tensor([0, 2, 1, 2, 2])
    p = StraightThroughSemiPermutation(g0, n_in=3)
    primal, dual = p.dense()
    torch.testing.assert_close(dual.detach(), kind.dual(g0))           # pinv(M)^T, the kind's own dual
    with torch.no_grad():
        p.scores.add_(torch.randn(p.scores.shape, dtype=F64, generator=torch.Generator().manual_seed(5)))
    assert kind.contains(p.element(), n_in=3)                          # still surjective


def test_free_invertible_projection_bounds_the_condition_number():
    p = FreeInvertible(torch.eye(3, dtype=F64), max_condition=100.0)
    with torch.no_grad():
        p.matrix.copy_(torch.diag(torch.tensor([1.0, 1e-6, 0.5], dtype=F64)))
    p.project()
    s = torch.linalg.svdvals(p.element())
    assert float(s[0] / s[-1]) <= 100.0 + 1e-9
    assert Invertible().contains(p.element())
    primal, dual = p.dense()
    torch.testing.assert_close(primal.mT @ dual, torch.eye(3, dtype=F64))


def test_every_builtin_kind_has_a_parametrisation_that_starts_at_its_element():
    gen = torch.Generator().manual_seed(0)
    for name, n_out, n_in in [("permutation", 4, 4), ("semi_permutation", 5, 3), ("orthogonal", 4, 4),
                              ("stiefel", 5, 3), ("invertible", 3, 3)]:
        kind = KINDS[name]
        g = kind.random(n_out, n_in, generator=gen)
        p = kind.parametrize(g, n_in=n_in)
        element = p.element()
        assert kind.contains(element, n_in=n_in) if name == "semi_permutation" else kind.contains(element)
        if element.is_floating_point():
            torch.testing.assert_close(element, g)
        else:
            assert torch.equal(element, g)


# ----------------------------------------------------------------------------- action and path loss


def _pairs_of(resolved, elements):
    """Each element as dense (primal, dual) matrices, from the group kinds' own to_matrix and dual."""
    pairs = {}
    for name, g in elements.items():
        site = resolved.sites[name]
        dual = site.kind.dual(g, n_in=site.size_in)
        dense = lambda m: m.to(F64) if m.is_floating_point() else site.kind.to_matrix(m, n_in=site.size_in)
        pairs[name] = (dense(g), dense(dual))
    return pairs


@pytest.mark.parametrize("name", SHIPPED)
def test_dense_action_equals_the_engine_on_every_shipped_spec(name):
    _, model, resolved = canonical_example(name)
    state = model.state_dict()
    g = random_transform(resolved, seed=3)
    expected = act_state_dict(resolved, state, g)
    moved = act_dense(resolved, state, _pairs_of(resolved, g))
    for key in resolved.tensors:
        torch.testing.assert_close(moved[key], expected[key], rtol=1e-12, atol=1e-12)


def _tiny_vit_pair():
    _, model, resolved = canonical_example("timm-vit")
    state_a = {k: v.clone() for k, v in model.state_dict().items()}
    return model, resolved, state_a


def test_path_loss_at_the_ends_is_each_model_s_own_loss():
    model, resolved, state_a = _tiny_vit_pair()
    g = random_transform(resolved, seed=1)
    hidden = act_state_dict(resolved, state_a, g)            # B: A moved by a random element
    x = torch.randn(8, 1, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(0))
    y = torch.arange(8) % 10
    path = PathLoss(model, resolved, [state_a, hidden], "classification")
    own = torch.nn.functional.cross_entropy(model(x), y).detach()
    torch.testing.assert_close(path.loss([1.0, 0.0], [None, None], x, y), own)
    torch.testing.assert_close(path.loss([0.0, 1.0], [None, None], x, y), own)   # a symmetry: same loss
    # half way without alignment is another model; with A moved by the hidden element it is g.A again
    assert abs(float(path.loss([0.5, 0.5], [None, None], x, y).detach()) - float(own)) > 1e-3
    torch.testing.assert_close(path.loss([0.5, 0.5], [_pairs_of(resolved, g), None], x, y), own)


def test_samplers_draw_inside_their_support_and_reject_bad_forms():
    gen = torch.Generator().manual_seed(0)
    u = parse_sampler("uniform:0.2,0.5", 2)
    assert all(0.2 <= u.draw(gen)[0] <= 0.5 for _ in range(50))
    d = parse_sampler("dirichlet:0.1", 3)
    w = d.draw(gen)
    assert len(w) == 3 and abs(sum(w) - 1) < 1e-9 and min(w) >= 0
    for bad, n in [("uniform:0.6,0.4", 2), ("uniform:0.4,0.6", 3), ("beta:1", 2), ("dirichlet:-1", 3)]:
        with pytest.raises(UsageError):
            parse_sampler(bad, n)


# ----------------------------------------------------------------------------- the matcher


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _two_tiny_vits(digits, steps=40):
    from symdsl.experiments.train import small_vit, train

    models = []
    for seed in (0, 1):
        model = small_vit(digits, embed_dim=16, depth=1, num_heads=2, seed=seed)
        train(model, digits, steps=steps, seed=seed, threads=1, evaluate_split=None)
        models.append(model)
    return models


def test_learned_matching_ends_no_worse_than_its_start_and_reports_true_values(digits):
    from symdsl.data.holdout import with_validation
    from symdsl.api.pipeline import match, prepare

    prepared = prepare(_two_tiny_vits(digits))
    # a frozen site keeps its weight-matching element and still acts while the others train
    result = match(prepared, 1, "learned", data=digits, steps=30, eval_every=10, freeze=["resid"])
    start = match(prepared, 1, "weight")
    torch.testing.assert_close(result.elements["resid"], start.elements["resid"])
    assert "resid" not in result.info["learned_sites"] and "mlp.0" in result.info["learned_sites"]
    history = result.info["history"]
    assert history[0]["step"] == 0 and result.objective[0] == history[0]["validation"]
    assert result.info["best_validation"] <= result.info["start_validation"]
    # the returned elements really give the reported best objective through the (non-differentiable)
    # engine: recompute it independently
    moved = act_state_dict(prepared.resolved, prepared.states[1], result.elements)
    path = PathLoss(prepared.models[0], prepared.resolved, [prepared.states[0], moved], "classification")
    val = [batch for i, batch in enumerate(with_validation(digits, 0.1).batches("test", 64)) if i < 4]
    recomputed = validation_objective(path, [None, None], parse_sampler("uniform:0.1,0.9", 2), val)
    assert recomputed == pytest.approx(result.info["best_validation"], rel=1e-5)
    assert result.info["start"]["matcher"] == "weight"


def test_learned_matching_keeps_a_hidden_element(digits):
    from symdsl.evaluate import barrier, loss_curve
    from symdsl.api.pipeline import match, prepare

    model = _two_tiny_vits(digits)[0]
    prepared = prepare([model, model])
    resolved = prepared.resolved
    hidden = random_transform(resolved, seed=7, dtype=torch.float32)
    prepared.states[1] = act_state_dict(resolved, prepared.states[0], hidden)
    result = match(prepared, 1, "learned", data=digits, steps=20, eval_every=10)
    aligned = act_state_dict(resolved, prepared.states[1], result.elements)
    assert relative_distance(resolved, aligned, prepared.states[0]) < 1e-5
    curve = loss_curve(prepared.models[0], prepared.states[0], aligned, digits, points=3)
    assert abs(barrier(curve).loss) < 1e-4


def test_learned_matching_permutations_only_learns_no_rotation(digits):
    from symdsl.api.pipeline import match, prepare

    prepared = prepare(_two_tiny_vits(digits, steps=10))
    result = match(prepared, 1, "learned", data=digits, steps=10, eval_every=5, permutations_only=True)
    resid = result.elements["resid"]
    assert set(torch.unique(resid).tolist()) <= {0.0, 1.0}              # a permutation matrix
    for name, site in prepared.resolved.sites.items():
        if site.kind.name == "invertible":
            torch.testing.assert_close(result.elements[name], site.kind.identity(site.size, batch=site.batch))
    assert "resid" in result.info["learned_sites"] and not any(s.startswith("qk") for s in result.info["learned_sites"])


def test_learned_matching_errors_are_usage_errors(digits):
    from symdsl.api.pipeline import match, prepare

    prepared = prepare(_two_tiny_vits(digits, steps=2))
    with pytest.raises(UsageError, match="give it data"):
        match(prepared, 1, "learned")
    with pytest.raises(UsageError, match="no option"):
        match(prepared, 1, "learned", data=digits, stpes=3)
    with pytest.raises(UsageError, match="sampler"):
        match(prepared, 1, "learned", data=digits, steps=1, lam="uniform:0.9")
    with pytest.raises(UsageError, match="freeze names site"):
        match(prepared, 1, "learned", data=digits, steps=1, freeze=["resdi"])
