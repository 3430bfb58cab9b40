"""Weight matching keeps A and B in their storage dtype and holds float64 only for the unit in flight.

A bfloat16 pair is matched without float64 copies of either model: each tensor is upcast when a
unit uses it, and what is cached (A's upcasts, B with the other sites applied) is dropped when the
next unit starts, within a byte budget that the residual rotation (every tensor) exceeds. These
tests check that the answers do not depend on any of this: bfloat16 against its exact float32
upcast, a zero budget against an unbounded one, and an exact recovery with nothing cached.
"""
from __future__ import annotations

import pytest
import torch

import symdsl_builtins.matchers.weight as weight
import symdsl_builtins.matchers.weight_problem as weight_problem
from conftest import REGISTRIES, canonical_example, relative_distance
from symdsl import find_spec
from symdsl.act import act_state_dict, random_transform
from symdsl.canon import canonicalize
from symdsl.models import build_example
from symdsl.spec import resolve

F64 = torch.float64


def _pair(name: str, dtype):
    """Two canonical example models (seeds 0, 1; every parameter perturbed) as ``dtype`` state dicts."""
    spec = find_spec(name)
    states = []
    for seed in (0, 1):
        model = build_example(spec, seed=seed).double()
        resolved = resolve(spec, model, registries=REGISTRIES)
        canonicalize(model, resolved)
        states.append({k: v.to(dtype) for k, v in model.state_dict().items()})
    return resolved, states[0], states[1]


@pytest.fixture
def problems(monkeypatch):
    """Every Problem the weight matcher builds, with ``cache_bytes`` overridden when one is set."""
    made, budget = [], {}

    class Recorded(weight.Problem):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            if "bytes" in budget:
                self.cache_bytes = budget["bytes"]
            made.append(self)

    monkeypatch.setattr(weight, "Problem", Recorded)
    return made, budget


def _match(resolved, a, b, **options):
    return REGISTRIES.matchers.lookup("weight").match(resolved, a, b, max_iter=3, tol=0.0, **options)


def _layer_f64_bytes(problem) -> int:
    return sum(8 * t.numel() for t in problem.a.values())


@pytest.mark.parametrize("name", ["hf-llama", "hf-gpt2"])
def test_a_bfloat16_pair_gives_the_elements_of_its_float32_upcast(name, problems):
    """Upcasting bfloat16 to float64 is exact, so the two runs see the same numbers: permutations
    agree exactly and continuous elements within 1e-9 (measured: bit for bit)."""
    made, _ = problems
    resolved, a16, b16 = _pair(name, torch.bfloat16)
    a32, b32 = ({k: v.float() for k, v in s.items()} for s in (a16, b16))
    low = _match(resolved, a16, b16)
    high = _match(resolved, a32, b32)
    assert low.objective == pytest.approx(high.objective, rel=1e-12)
    assert low.objective[-1] < low.objective[0]                 # the descent did something
    for site, g in high.elements.items():
        if g.is_floating_point():
            torch.testing.assert_close(low.elements[site], g, rtol=0, atol=1e-9, msg=site)
        else:
            assert torch.equal(low.elements[site], g), site
    # the bfloat16 run's Problem held the inputs themselves (same storage, no copy), not float64 copies
    problem = made[0]
    assert problem.a and all(t.dtype == torch.bfloat16 for t in (*problem.a.values(), *problem.b.values()))
    assert all(problem.a[n].data_ptr() == a16[n].data_ptr() for n in problem.a)


def test_the_cache_budget_changes_time_not_answers(problems):
    """A zero budget (recompute every float64 tensor) and an unbounded one give identical results;
    the default budget holds less than both models' layer tensors in float64 at any time."""
    made, budget = problems
    resolved, a, b = _pair("hf-llama", torch.float32)
    default = _match(resolved, a, b)
    budget["bytes"] = 0
    none = _match(resolved, a, b)
    budget["bytes"] = 1 << 60
    unbounded = _match(resolved, a, b)
    for other in (none, unbounded):
        assert other.objective == default.objective
        assert all(torch.equal(other.elements[s], g) for s, g in default.elements.items())
    whole = 2 * _layer_f64_bytes(made[0])                       # A and B in float64, as before
    assert made[1].peak_held == 0
    assert 0 < made[0].peak_held <= made[0].cache_bytes < whole / 2
    assert made[2].peak_held > made[0].cache_bytes             # unbounded: the residual unit caches everything
    assert not made[0]._a64 and not made[0]._base               # nothing outlives its unit


def test_recovery_with_nothing_cached_is_exact(problems):
    """A hidden random element of every Llama site is recovered with every tensor recomputed on use."""
    _, budget = problems
    budget["bytes"] = 0
    _, model, resolved = canonical_example("hf-llama")
    a = model.state_dict()
    b = act_state_dict(resolved, a, random_transform(resolved, seed=7))
    result = REGISTRIES.matchers.lookup("weight").match(resolved, a, b)
    assert relative_distance(resolved, act_state_dict(resolved, b, result.elements), a) < 1e-6


def test_re_measuring_instead_of_keeping_correlation_terms_gives_the_same_answer(problems, monkeypatch):
    """With no room for the residual rotation's per-tensor terms, its tensors are re-measured after
    the solve: the same elements, and the objective within float64 rounding (another formula)."""
    _, budget = problems
    resolved, a, b = _pair("hf-llama", torch.float64)
    kept = _match(resolved, a, b)
    budget["bytes"] = 0
    monkeypatch.setattr(weight_problem, "_TERM_BYTES", 0)
    measured = _match(resolved, a, b)
    assert measured.objective == pytest.approx(kept.objective, rel=1e-9)
    for site, g in kept.elements.items():
        if g.is_floating_point():
            torch.testing.assert_close(measured.elements[site], g, rtol=0, atol=1e-9, msg=site)
        else:
            assert torch.equal(measured.elements[site], g), site
