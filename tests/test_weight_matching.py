"""Weight matching: recovery of hidden group elements, solvers against brute force, mergers."""
from __future__ import annotations

import itertools

import pytest
import scipy.linalg
import torch

from conftest import SHIPPED, canonical_example, relative_distance
from symdsl.act import act_state_dict, random_transform
from symdsl.canon import canonicalize
from symdsl.groups import get_group_kind
from symdsl.match.solvers import maximize_trace
from symdsl.models import build_example
from symdsl.models.build import make_inputs
from symdsl.spec import model_config, resolve
from symdsl import find_spec
from conftest import REGISTRIES

F64 = torch.float64


def _outputs(spec, model, resolved, state):
    inputs = make_inputs(spec, {**model_config(model), **resolved.dims})
    model.load_state_dict(state)
    with torch.no_grad():
        out = model(**inputs)
    return out.logits if hasattr(out, "logits") else out


@pytest.mark.parametrize("name", SHIPPED)
def test_weight_matching_recovers_a_hidden_transform(name):
    spec, model, resolved = canonical_example(name)
    a = {k: v.clone() for k, v in model.state_dict().items()}
    hidden = random_transform(resolved, seed=11)
    b = act_state_dict(resolved, a, hidden)
    assert relative_distance(resolved, b, a) > 0.3            # B looks unrelated to A
    result = REGISTRIES.matchers.lookup("weight").match(resolved, a, b)
    aligned = act_state_dict(resolved, b, result.elements)
    assert relative_distance(resolved, aligned, a) < 1e-6
    assert all(x >= y - 1e-9 * abs(x) for x, y in zip(result.objective, result.objective[1:]))   # monotone
    # the recovered element of each site undoes the hidden one
    for site, g in result.elements.items():
        kind = resolved.sites[site].kind
        if kind.name == "permutation":
            assert torch.equal(g, kind.inverse(hidden[site])), site
        elif kind.name == "orthogonal":
            torch.testing.assert_close(g, hidden[site].mT, rtol=0, atol=1e-8)
    # and the aligned model computes what A computes: barrier 0 along the whole path
    ref = _outputs(spec, model, resolved, a)
    torch.testing.assert_close(_outputs(spec, model, resolved, aligned), ref, rtol=1e-9, atol=1e-9)


def test_recovery_with_noise_lands_at_the_noise_level():
    spec, model, resolved = canonical_example("hf-gpt2")
    a = model.state_dict()
    generator = torch.Generator().manual_seed(3)
    noisy = {k: v + 1e-3 * v.std() * torch.randn(v.shape, generator=generator, dtype=F64) for k, v in a.items()}
    b = act_state_dict(resolved, noisy, random_transform(resolved, seed=5))
    aligned = act_state_dict(resolved, b, REGISTRIES.matchers.lookup("weight").match(resolved, a, b).elements)
    assert relative_distance(resolved, aligned, a) < 5e-3


@pytest.mark.parametrize("site", ["resid", "heads.1", "qk.0", "ov.1", "mlp.0"])
def test_each_group_kind_alone_is_recovered(site):
    _, model, resolved = canonical_example("hf-gpt2")
    a = model.state_dict()
    b = act_state_dict(resolved, a, random_transform(resolved, [site], seed=2))
    aligned = act_state_dict(resolved, b, REGISTRIES.matchers.lookup("weight").match(resolved, a, b).elements)
    assert relative_distance(resolved, aligned, a) < 1e-8


def test_permutations_only_mode_uses_permutation_matrices_for_rotations():
    _, model, resolved = canonical_example("timm-vit")
    a = model.state_dict()
    b = act_state_dict(resolved, a, random_transform(resolved, seed=4))
    result = REGISTRIES.matchers.lookup("weight").match(resolved, a, b, permutations_only=True)
    resid = result.elements["resid"]
    assert torch.equal(resid.abs().sum(0), torch.ones(resid.shape[0], dtype=F64))
    assert set(resid.unique().tolist()) <= {0.0, 1.0}
    assert all(torch.equal(result.elements[s], torch.eye(8, dtype=F64).expand(4, 8, 8))
               for s in resolved.sites if s.startswith(("qk", "ov")))
    full = REGISTRIES.matchers.lookup("weight").match(resolved, a, b)
    assert full.objective[-1] < result.objective[-1]           # the full symmetry set fits better


# -- solvers against brute force and closed forms ----------------------------------------------
def test_assignment_matches_brute_force():
    c = torch.randn(6, 6, generator=torch.Generator().manual_seed(0), dtype=F64)
    perm = get_group_kind("permutation")
    best = max(itertools.permutations(range(6)), key=lambda p: sum(float(c[i, p[i]]) for i in range(6)))
    assert maximize_trace(perm, c).tolist() == list(best)


def test_procrustes_matches_the_polar_factor():
    c = torch.randn(5, 5, generator=torch.Generator().manual_seed(1), dtype=F64)
    u, _ = scipy.linalg.polar(c.numpy())
    torch.testing.assert_close(maximize_trace(get_group_kind("orthogonal"), c), torch.from_numpy(u))


def test_procrustes_fixing_ones_beats_every_sampled_rotation_fixing_ones():
    kind = get_group_kind("orthogonal")
    c = torch.randn(6, 6, generator=torch.Generator().manual_seed(2), dtype=F64)
    g = maximize_trace(kind, c, {"preserve": "ones"})
    ones = torch.ones(6, dtype=F64)
    torch.testing.assert_close(g @ ones, ones)
    best = float((g * c).sum())
    generator = torch.Generator().manual_seed(3)
    for _ in range(300):
        other = kind.random(6, options={"preserve": "ones"}, generator=generator)
        assert float((other * c).sum()) <= best + 1e-9


def test_stiefel_solution_is_the_thin_polar_factor():
    c = torch.randn(7, 3, generator=torch.Generator().manual_seed(4), dtype=F64)
    u, _, vh = torch.linalg.svd(c, full_matrices=False)
    torch.testing.assert_close(maximize_trace(get_group_kind("stiefel"), c), u @ vh)


def test_surjective_assignment_matches_brute_force():
    kind = get_group_kind("semi_permutation")
    c = torch.randn(5, 3, generator=torch.Generator().manual_seed(5), dtype=F64)
    maps = [m for m in itertools.product(range(3), repeat=5) if set(m) == {0, 1, 2}]
    best = max(maps, key=lambda m: sum(float(c[i, m[i]]) for i in range(5)))
    got = maximize_trace(kind, c)
    assert set(got.tolist()) == {0, 1, 2}
    assert sum(float(c[i, got[i]]) for i in range(5)) == pytest.approx(sum(float(c[i, best[i]]) for i in range(5)))


# -- mergers ----------------------------------------------------------------------------------
def test_merging_a_model_with_its_aligned_twin_returns_the_model():
    _, model, resolved = canonical_example("hf-bert")
    a = model.state_dict()
    b = act_state_dict(resolved, a, random_transform(resolved, seed=9))
    aligned = act_state_dict(resolved, b, REGISTRIES.matchers.lookup("weight").match(resolved, a, b).elements)
    merged = REGISTRIES.mergers.lookup("average").merge([a, aligned])
    for name in a:
        torch.testing.assert_close(merged[name], a[name], rtol=1e-9, atol=1e-9)
    halfway = REGISTRIES.mergers.lookup("interpolate").merge([a, aligned], lam=0.3)
    for name in a:
        torch.testing.assert_close(halfway[name], a[name], rtol=1e-9, atol=1e-9)


def test_average_weights_are_normalised_and_checked():
    from symdsl.errors import UsageError

    x = {"w": torch.tensor([1.0, 2.0])}
    y = {"w": torch.tensor([3.0, 6.0])}
    merged = REGISTRIES.mergers.lookup("average").merge([x, y], [1, 3])
    torch.testing.assert_close(merged["w"], torch.tensor([2.5, 5.0]))
    with pytest.raises(UsageError, match="state dicts differ: key .w. is missing from model 1"):
        REGISTRIES.mergers.lookup("average").merge([x, {"v": torch.ones(2)}])


@pytest.mark.parametrize("name", ["hf-gpt2", "hf-bert"])
def test_reported_objective_equals_the_distance_it_claims(name):
    """The matcher scores some updates from correlations instead of re-applying them: check the bookkeeping."""
    _, model, resolved = canonical_example(name)
    other = build_example(find_spec(name), seed=1).double()
    canonicalize(other, resolve(find_spec(name), other, registries=REGISTRIES))
    a, b = model.state_dict(), other.state_dict()
    result = REGISTRIES.matchers.lookup("weight").match(resolved, a, b, max_iter=3)
    aligned = act_state_dict(resolved, b, result.elements)
    actual = sum(float(((a[n] - aligned[n]) ** 2).sum()) for n in resolved.tensors)
    assert result.objective[-1] == pytest.approx(actual, rel=1e-9)
    assert result.objective[-1] < result.objective[0]
