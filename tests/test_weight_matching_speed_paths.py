"""The fast paths of weight matching give the answers of the plain ones.

float32 correlations for assignments, constant correlations of single-site tensors formed chunk
by chunk from the tensors' own dtype, cached partially transformed B, Gram-matrix least squares
with a closed-form gradient, and the optional phase timer: each is checked against a float64 or
brute-force reference.
"""
from __future__ import annotations

import pytest
import torch

import symdsl_builtins.matchers.weight_problem as weight_problem
from conftest import canonical_example, relative_distance
from symdsl.act import act_state_dict, random_transform
from symdsl.canon import canonicalize
from symdsl.errors import UsageError
from symdsl.groups import get_group_kind
from symdsl.match.refine import refine_lbfgs
from symdsl.match.solvers import Gram, gram_gradient, gram_objective
from symdsl.models import build_example
from symdsl.spec import resolve
from symdsl import find_spec
from conftest import REGISTRIES

F64 = torch.float64


def _distance(resolved, a, b, elements) -> float:
    """sum_t ||A_t - act(g, B)_t||^2 in float64, straight from the engine."""
    b64 = {k: v.double() for k, v in b.items()}
    aligned = act_state_dict(resolved, b64, {k: v.double() if v.is_floating_point() else v for k, v in elements.items()})
    return sum(float(((a[n].double() - aligned[n]) ** 2).sum()) for n in resolved.tensors)


def _pair(name: str, dtype=F64):
    """Two canonical example models of a shipped spec (seeds 0 and 1) as state dicts of ``dtype``."""
    spec = find_spec(name)
    states = []
    for seed in (0, 1):
        model = build_example(spec, seed=seed).to(dtype)
        resolved = resolve(spec, model, registries=REGISTRIES)
        canonicalize(model, resolved)
        states.append(model.state_dict())
    return resolved, states[0], states[1]


@pytest.mark.parametrize("name", ["hf-gpt2", "timm-vit"])
def test_float32_correlations_recover_the_same_elements_as_float64(name):
    _, model, resolved = canonical_example(name)
    a = model.state_dict()
    b = act_state_dict(resolved, a, random_transform(resolved, seed=13))
    mixed = REGISTRIES.matchers.lookup("weight").match(resolved, a, b, precision="mixed")
    exact = REGISTRIES.matchers.lookup("weight").match(resolved, a, b, precision="float64")
    for site, g in exact.elements.items():
        if g.is_floating_point():
            torch.testing.assert_close(mixed.elements[site], g, rtol=0, atol=1e-9, msg=site)
        else:
            assert torch.equal(mixed.elements[site], g), site
    assert relative_distance(resolved, act_state_dict(resolved, b, mixed.elements), a) < 1e-6


@pytest.mark.parametrize("name", ["hf-gpt2", "hf-bert", "timm-vit"])
@pytest.mark.parametrize("precision", ["mixed", "float64"])
def test_objective_is_the_true_distance_on_unrelated_models(name, precision):
    """Constant terms, cached partial products and correlation-based scores add up to the real J."""
    resolved, a, b = _pair(name)
    result = REGISTRIES.matchers.lookup("weight").match(resolved, a, b, max_iter=3, tol=0.0, precision=precision)
    assert result.objective[-1] == pytest.approx(_distance(resolved, a, b, result.elements), rel=1e-9)
    assert result.objective[0] == pytest.approx(_distance(resolved, a, b, {}), rel=1e-12)
    assert all(x >= y - 1e-9 * abs(x) for x, y in zip(result.objective, result.objective[1:]))   # monotone


def test_constant_terms_from_float32_tensors_in_chunks_match_float64(monkeypatch):
    """Single-site tensors larger than their (n, n) term (wte, lm_head) are read chunk by chunk from float32."""
    resolved, a32, b32 = _pair("hf-gpt2", torch.float32)
    a64, b64 = ({k: v.double() for k, v in s.items()} for s in (a32, b32))
    monkeypatch.setattr(weight_problem, "_CHUNK", 100)        # many chunks even for tiny embeddings
    problem = weight_problem.Problem(resolved, a32, b32, "cpu", False, "float64", None)
    assert {"transformer.wte.weight", "lm_head.weight"} <= set(problem.const)
    assert "transformer.wpe.weight" not in problem.const      # 16 x 32: smaller than its 32 x 32 term
    assert "transformer.wte.weight" not in problem.a          # no float64 copy of the embeddings
    chunked = REGISTRIES.matchers.lookup("weight").match(resolved, a32, b32, max_iter=2, precision="float64")
    monkeypatch.setattr(weight_problem, "_CHUNK", 1 << 22)
    whole = REGISTRIES.matchers.lookup("weight").match(resolved, a64, b64, max_iter=2, precision="float64")
    assert chunked.objective == pytest.approx(whole.objective, rel=1e-11)
    assert chunked.objective[-1] == pytest.approx(_distance(resolved, a64, b64, chunked.elements), rel=1e-9)


def test_matching_is_deterministic():
    resolved, a, b = _pair("hf-gpt2")
    first = REGISTRIES.matchers.lookup("weight").match(resolved, a, b, max_iter=2)
    second = REGISTRIES.matchers.lookup("weight").match(resolved, a, b, max_iter=2)
    assert first.objective == second.objective
    assert all(torch.equal(first.elements[s], second.elements[s]) for s in first.elements)


def _pairs(seed: int, heads=3, k=4, width=9):
    gen = torch.Generator().manual_seed(seed)
    return [tuple(torch.randn(heads, k, width, dtype=F64, generator=gen) for _ in range(2)) for _ in range(2)]


def _exact_objective(primal, dual, g):
    total = sum(((a - g @ b) ** 2).sum() for a, b in primal)
    inv_t = torch.linalg.inv(g).mT
    return total + sum(((a - inv_t @ b) ** 2).sum() for a, b in dual)


def test_gram_objective_and_gradient_match_the_objective_on_the_weights():
    primal, dual = _pairs(0), _pairs(1)
    g = torch.eye(4, dtype=F64) + 0.2 * torch.randn(3, 4, 4, dtype=F64, generator=torch.Generator().manual_seed(2))
    reference = g.clone().requires_grad_(True)
    expected = _exact_objective(primal, dual, reference)
    expected.backward()                                        # autograd on the weights themselves
    gram_p, gram_d = Gram.of(primal, with_aa=False), Gram.of(dual)
    value, grad = gram_gradient(gram_p, gram_d)(g)
    torch.testing.assert_close(value, expected.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(gram_objective(gram_p, gram_d)(g), expected.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(grad, reference.grad, rtol=1e-10, atol=1e-10)


def test_lbfgs_with_a_closed_form_gradient_finds_the_least_squares_solution():
    """One-sided least squares has the closed form (A B^T)(B B^T)^-1: L-BFGS must reach it."""
    primal = _pairs(3)
    gram = Gram.of(primal, with_aa=False)
    closed = gram.ab @ torch.linalg.inv(gram.bb)
    start = torch.eye(4, dtype=F64).expand(3, 4, 4).clone()
    g, improved = refine_lbfgs(start, gram_objective(gram, None), get_group_kind("invertible"), max_iter=200,
                               gradient=gram_gradient(gram, None))
    assert improved
    torch.testing.assert_close(g, closed, rtol=1e-7, atol=1e-7)


class _Recorder:
    def __init__(self):
        self.phases: dict[str, int] = {}
        self.events: list[tuple[str, dict]] = []

    def phase(self, name):
        self.phases[name] = self.phases.get(name, 0) + 1
        from contextlib import nullcontext

        return nullcontext()

    def note(self, event, **data):
        self.events.append((event, data))


def test_profile_sees_every_phase_and_changes_nothing():
    resolved, a, b = _pair("hf-gpt2")
    recorder = _Recorder()
    plain = REGISTRIES.matchers.lookup("weight").match(resolved, a, b, max_iter=2)
    timed = REGISTRIES.matchers.lookup("weight").match(resolved, a, b, max_iter=2, profile=recorder)
    assert timed.objective == plain.objective
    assert {"correlate", "assign", "svd", "invertible", "apply", "score"} <= set(recorder.phases)
    solved = [data["kind"].name for event, data in recorder.events if event == "maximize_trace"]
    assert {"orthogonal", "permutation"} <= set(solved)
    for event, data in recorder.events:
        if event == "matmul":
            assert data["a"].shape[-1] == data["b"].shape[-2]      # a @ b is what was multiplied


def test_unknown_precision_is_a_usage_error_naming_the_choices():
    resolved, a, b = _pair("hf-gpt2")
    with pytest.raises(UsageError, match=r"precision='float16' must be 'mixed' or 'float64'"):
        REGISTRIES.matchers.lookup("weight").match(resolved, a, b, precision="float16")
