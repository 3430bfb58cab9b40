"""Correlation terms kept across sweeps (symdsl.match.term_cache) change no result, only the work.

Weight matching keeps a site's correlation term of a tensor while the tensor's other sites keep
their elements (the residual rotation's terms of the MLP matrices once the MLP permutations have
settled). Checked: the answers are bit for bit those of recomputing every term, terms are
actually reused, and a changed element on the other side makes the stored term stale.
"""
from __future__ import annotations

import pytest
import torch

import symdsl.match.term_cache as term_cache
import symdsl_builtins.matchers.weight_problem as weight_problem
from conftest import REGISTRIES
from symdsl import find_spec
from symdsl.canon import canonicalize
from symdsl.models import build_example
from symdsl.spec import resolve

F64 = torch.float64


def _pair(name: str):
    """Two canonical example models of a shipped spec (seeds 0 and 1), every parameter random."""
    spec = find_spec(name)
    states = []
    for seed in (0, 1):
        model = build_example(spec, seed=seed).to(F64)
        with torch.no_grad():      # no unit gain or zero bias left to hide a wrong term
            for p in model.parameters():
                p.add_(0.1 * torch.randn(p.shape, dtype=F64, generator=torch.Generator().manual_seed(seed)))
        resolved = resolve(spec, model, registries=REGISTRIES)
        canonicalize(model, resolved)
        states.append(model.state_dict())
    return resolved, states[0], states[1]


class _Counting(term_cache.TermCache):
    hits_seen = 0

    def get(self, key, stamp):
        value = super().get(key, stamp)
        _Counting.hits_seen += value is not None
        return value


# hf-gpt2-circuits: the QK/OV circuit matrices carry the residual site on both axes (kept terms must skip them)
@pytest.mark.parametrize("name", ["hf-gpt2", "hf-llama", "hf-gpt2-circuits"])
def test_kept_terms_give_the_same_elements_and_objective_as_recomputing(name, monkeypatch):
    resolved, a, b = _pair(name)
    matcher = REGISTRIES.matchers.lookup("weight")
    _Counting.hits_seen = 0
    monkeypatch.setattr(weight_problem, "TermCache", _Counting)
    kept = matcher.match(resolved, a, b, max_iter=4, tol=0.0)
    assert _Counting.hits_seen > 0                                   # the path under test ran
    monkeypatch.setattr(weight_problem.Problem, "term_stamp", lambda self, site, name, dtype: None)
    fresh = matcher.match(resolved, a, b, max_iter=4, tol=0.0)
    assert kept.objective == fresh.objective
    assert all(torch.equal(kept.elements[s], fresh.elements[s]) for s in fresh.elements)


def test_a_changed_element_on_the_other_side_makes_the_term_stale():
    resolved, a, b = _pair("hf-gpt2")
    problem = weight_problem.Problem(resolved, a, b, "cpu", False, "mixed", None)
    name = "transformer.h.0.mlp.c_fc.weight"
    stamp = problem.term_stamp("resid", name, F64)
    assert stamp is not None                  # other site mlp.0 is discrete: worth keeping
    problem.terms.put(("resid", name), stamp, ["term"], 8)
    assert problem.terms.get(("resid", name), problem.term_stamp("resid", name, F64)) == ["term"]
    size = problem.sites["mlp.0"].size
    problem.set("mlp.0", torch.roll(torch.arange(size), 1))
    assert problem.terms.get(("resid", name), problem.term_stamp("resid", name, F64)) is None
    # a tensor whose other sites move every sweep (per-head invertible maps) is never kept
    assert problem.term_stamp("resid", "transformer.h.0.attn.c_attn.weight", F64) is None


def test_the_cache_stays_within_its_budget():
    cache = term_cache.TermCache(budget=100)
    assert cache.put("a", 1, "x", 60)
    assert not cache.put("b", 1, "y", 60)           # would exceed the budget: not kept
    assert cache.get("b", 1) is None and cache.held == 60
    assert cache.put("a", 2, "z", 90)               # replacing frees the old entry first
    assert cache.get("a", 1) is None and cache.get("a", 2) == "z" and cache.held == 90


@pytest.mark.parametrize("name", ["hf-gpt2", "timm-vit"])
def test_per_head_maps_start_from_their_last_fit_while_the_head_order_holds(name, monkeypatch):
    """A head unit whose permutation did not change keeps its per-head maps as L-BFGS's start
    (a candidate beside the closed forms) instead of the identity: never a worse objective."""
    import symdsl_builtins.matchers.weight as weight

    resolved, a, b = _pair(name)
    matcher = REGISTRIES.matchers.lookup("weight")
    resets: list[str] = []
    reset = weight._reset

    def counted(problem, site):
        resets.append(site)
        reset(problem, site)

    monkeypatch.setattr(weight, "_reset", counted)
    warm = matcher.match(resolved, a, b, max_iter=4, tol=0.0)
    kept_resets = len(resets)
    solve_parent = weight._solve_parent

    def always_reset(problem, parent, kids):       # the old rule: identity start every sweep
        order = solve_parent(problem, parent, kids)
        for kid in kids:
            reset(problem, kid)
        return order

    monkeypatch.setattr(weight, "_solve_parent", always_reset)
    cold = matcher.match(resolved, a, b, max_iter=4, tol=0.0)
    kids = [s for s, info in resolved.sites.items() if info.per in resolved.sites]
    assert kept_resets < 5 * len(kids)            # not reset in every one of the 5 passes
    assert warm.objective[-1] <= cold.objective[-1] * (1 + 1e-12)
