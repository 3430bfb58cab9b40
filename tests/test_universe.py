"""Universe matching of N models, transform composition, learned refinement and the N-model merge."""
from __future__ import annotations

import itertools
import json

import pytest
import torch

from conftest import canonical_example, relative_distance
from symdsl.act import act_state_dict, random_transform
from symdsl.data import load_dataset
from symdsl.data.holdout import with_validation
from symdsl.errors import UsageError
from symdsl.evaluate import evaluate, weighted_average
from symdsl.learn.objective import PathLoss
from symdsl.learn.samplers import parse_sampler
from symdsl.learn.universe_refine import refine_universe
from symdsl.match.universe import compose_transforms, universe_match, universe_objective
from symdsl.api.universe_merge import merge_universe
from symdsl.models import build_example
from symdsl import find_spec
from conftest import REGISTRIES

F64 = torch.float64
FAST = {"invertible_steps": 3, "weight_max_iter": 2}   # short weight matchings for noisy problems


def _matrix(resolved, site, g):
    return resolved.sites[site].kind.to_matrix(g, dtype=F64)


@pytest.mark.parametrize("name, n", [("timm-vit", 4), ("hf-gpt2", 3)])
def test_universe_matching_recovers_a_common_frame(name, n):
    _, model, resolved = canonical_example(name)
    theta = {k: v.clone() for k, v in model.state_dict().items()}
    hidden = [random_transform(resolved, seed=20 + i) for i in range(n)]
    states = [act_state_dict(resolved, theta, h) for h in hidden]
    assert min(relative_distance(resolved, a, b) for a, b in itertools.combinations(states, 2)) > 0.3
    result = universe_match(resolved, states, matcher=REGISTRIES.matchers["weight"])
    aligned = result.aligned(resolved, states)
    for a, b in itertools.combinations(aligned, 2):               # all pairwise distances ~ 0
        assert relative_distance(resolved, a, b) < 1e-6
    assert max(map(max, result.info["relative_distance"])) < 1e-6
    # the universe is the common model up to one global transform: model 0's hidden one (the gauge)
    universe = weighted_average(aligned)
    assert relative_distance(resolved, universe, act_state_dict(resolved, theta, hidden[0])) < 1e-6
    # element by element: g_i o h_i = h_0 for every model and site, per-head maps included
    for i in range(n):
        total = compose_transforms(resolved, result.elements[i], hidden[i])
        for site in resolved.sites:
            torch.testing.assert_close(_matrix(resolved, site, total[site]), _matrix(resolved, site, hidden[0][site]),
                                       rtol=0, atol=1e-8, msg=f"model {i}, site {site}")
    for site, g in result.elements[0].items():                   # model 0 is never moved
        kind = resolved.sites[site].kind
        torch.testing.assert_close(_matrix(resolved, site, g), _matrix(resolved, site, kind.identity(
            resolved.sites[site].size, resolved.sites[site].size_in, resolved.sites[site].batch)))


@pytest.mark.parametrize("name", ["hf-gpt2", "timm-vit"])
def test_compose_transforms_equals_acting_twice(name):
    """Reference: the engine applied twice. Per-head maps under head permutations must follow them."""
    _, model, resolved = canonical_example(name)
    theta = model.state_dict()
    inner, outer = random_transform(resolved, seed=1), random_transform(resolved, seed=2)
    twice = act_state_dict(resolved, act_state_dict(resolved, theta, inner), outer)
    once = act_state_dict(resolved, theta, compose_transforms(resolved, outer, inner))
    assert relative_distance(resolved, once, twice) < 1e-12
    # naive per-site composition is wrong for the per-head maps: the test can tell the difference
    naive = {s: resolved.sites[s].kind.compose(outer[s], inner[s]) for s in resolved.sites}
    assert relative_distance(resolved, act_state_dict(resolved, theta, naive), twice) > 1e-3


def _noisy_copies(name, n, scale=0.05):
    _, model, resolved = canonical_example(name)
    theta = model.state_dict()
    generator = torch.Generator().manual_seed(7)
    states = []
    for i in range(n):
        noisy = {k: v + scale * v.std() * torch.randn(v.shape, generator=generator, dtype=F64)
                 if v.is_floating_point() and v.numel() > 1 else v for k, v in theta.items()}
        states.append(act_state_dict(resolved, noisy, random_transform(resolved, seed=40 + i)))
    return resolved, states


def test_objective_is_monotone_and_is_the_pairwise_form():
    resolved, states = _noisy_copies("timm-vit", 3)
    result = universe_match(resolved, states, max_iter=3, tol=0.0, **FAST, matcher=REGISTRIES.matchers["weight"])
    assert result.info["sweeps"] == 3 and result.info["stopped"] == "max_iter"
    assert all(b <= a * (1 + 1e-12) for a, b in zip(result.objective, result.objective[1:]))
    # sum_i ||U - a_i||^2 == (1/N) sum_{i<j} ||a_i - a_j||^2, computed from the aligned models directly
    aligned = result.aligned(resolved, states)
    names = list(resolved.tensors)
    pairwise = sum(float(((a[t] - b[t]) ** 2).sum()) for a, b in itertools.combinations(aligned, 2) for t in names)
    assert result.objective[-1] == pytest.approx(pairwise / 3, rel=1e-9)
    assert universe_objective(aligned, names) == pytest.approx(result.objective[-1], rel=1e-12)
    # noise 5%: aligned at the noise level, far below unaligned
    assert max(map(max, result.info["relative_distance"])) < 0.2


def test_universe_matching_is_deterministic_and_checks_its_input():
    resolved, states = _noisy_copies("timm-vit", 3)
    first, second = (universe_match(resolved, states, max_iter=1, **FAST, matcher=REGISTRIES.matchers["weight"]) for _ in range(2))
    assert first.objective == second.objective
    with pytest.raises(UsageError, match="at least two"):
        universe_match(resolved, states[:1], matcher=REGISTRIES.matchers["weight"])
    broken = dict(states[2])
    del broken["cls_token"]
    with pytest.raises(UsageError, match="model 2 has no tensor 'cls_token'"):
        universe_match(resolved, [states[0], states[1], broken], matcher=REGISTRIES.matchers["weight"])


def _tiny_vits(n=3):
    """Tiny timm ViTs (the spec's 32-wide example, random weights) and the digits dataset."""
    spec = find_spec("timm-vit")
    return [build_example(spec, seed=s, perturb=False) for s in range(n)], load_dataset("digits")


def _validation_objective(model, resolved, states, elements, dataset, alpha, batches):
    """The refinement's validation objective, recomputed from scratch with the engine's action."""
    moved = [act_state_dict(resolved, s, g) for s, g in zip(states, elements)]
    path = PathLoss(model, resolved, moved, dataset.task)
    fit = with_validation(dataset, 0.1)
    val = [(x, y) for i, (x, y) in enumerate(fit.batches("test", 64)) if i < batches]
    n = len(states)

    def mean_loss(w):
        total = count = 0
        with torch.no_grad():
            for x, y in val:
                total += float(path.loss(w, [None] * n, x, y)) * y.numel()
                count += y.numel()
        return total / count

    # the barrier over the simplex: loss above the plane through the endpoints' losses, at its worst
    ends = [mean_loss([float(i == j) for j in range(n)]) for i in range(n)]
    return max(mean_loss(w) - sum(wi * e for wi, e in zip(w, ends))
               for w in parse_sampler(f"dirichlet:{alpha}", n).validation_points())


def test_refinement_never_ends_worse_than_its_start():
    from symdsl.api.pipeline import prepare

    models, dataset = _tiny_vits()
    prepared = prepare(models, "timm-vit")
    r, states, template = prepared.resolved, prepared.states, prepared.models[0]
    start = universe_match(r, states, max_iter=1, **FAST, matcher=REGISTRIES.matchers["weight"])
    refined = refine_universe(template, r, states, start.elements, dataset, steps=30, eval_every=10, lr=0.01,
                              validation_batches=2, freeze=["resid"])
    info = refined.info
    assert info["best_validation"] <= info["start_validation"]
    assert refined.objective[0] == info["start_validation"] and min(refined.objective) == info["best_validation"]
    assert info["best_validation"] < info["start_validation"]       # 30 steps on a random model do help
    # independent reference: the returned transforms, applied by the engine to the original models
    again = _validation_objective(template, r, states, refined.elements, dataset, 0.1, 2)
    assert again == pytest.approx(info["best_validation"], rel=1e-4)
    assert _validation_objective(template, r, states, start.elements, dataset, 0.1, 2) == pytest.approx(
        info["start_validation"], rel=1e-4)
    # gauge and freeze: model 0 and the frozen site keep their universe elements exactly
    for site in r.sites:
        assert torch.equal(refined.elements[0][site], start.elements[0][site])
    for i in (1, 2):
        torch.testing.assert_close(refined.elements[i]["resid"], start.elements[i]["resid"], rtol=0, atol=1e-12)
    assert "resid" not in info["learned_sites"] and "heads.0" in info["learned_sites"]
    with pytest.raises(UsageError, match="no option"):
        refine_universe(template, r, states, start.elements, dataset, step=3)
    with pytest.raises(UsageError, match="spec 'timm-vit' does not have"):
        refine_universe(template, r, states, start.elements, dataset, freeze=["resdi"])


def test_merge_universe_writes_the_merged_model_and_the_simplex_plot(tmp_path):
    models, dataset = _tiny_vits()
    png = tmp_path / "simplex.png"
    out = merge_universe(models, "timm-vit", refine=True, dataset=dataset, surface_path=png, resolution=3,
                         universe_options={"max_iter": 1, **FAST},
                         refine_options={"steps": 10, "eval_every": 5, "validation_batches": 1})
    assert type(out.model).__name__ == "VisionTransformer"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads(png.with_suffix(".json").read_text())
    assert record["format"] == "symdsl.simplex-report/1"
    assert list(record["surfaces"]) == ["vanilla", "universe weight matching", "universe + refinement"]
    # the merged model is the centroid of the refined alignment: same test metrics as the surface there
    centroid = out.surfaces["universe + refinement"].summary()
    metrics = evaluate(out.model, dataset)
    assert metrics["loss"] == pytest.approx(centroid["centroid_loss"], rel=1e-6)
    assert metrics["accuracy"] == centroid["centroid_accuracy"]
    assert out.result is out.refined and json.dumps(out.to_record(), default=str)
    with pytest.raises(UsageError, match="pass a dataset"):
        merge_universe(models, "timm-vit", refine=True)
    with pytest.raises(UsageError, match="three models"):
        merge_universe(models[:2], "timm-vit", dataset=dataset, surface_path=png)
