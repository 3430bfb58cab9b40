"""Simplex surfaces of three models: the grid, the planar baseline, values, JSON and the heat map."""
from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from symdsl.data import load_dataset
from symdsl.errors import UsageError
from symdsl.evaluate.simplex import (CENTROID, Surface, read_surfaces, simplex_grid, simplex_surface,
                                     surfaces_record)
from symdsl.evaluate.simplex_plot import plot_simplex, to_plane
from symdsl.models import build_example
from symdsl import find_spec


@pytest.mark.parametrize("n", range(1, 8))
def test_grid_is_every_barycentric_point_of_resolution_n(n):
    points = simplex_grid(n)
    # brute force: all (i, j, k) in {0..n}^3 with i + j + k = n
    expected = sorted((i / n, j / n, k / n) for i, j, k in itertools.product(range(n + 1), repeat=3) if i + j + k == n)
    on_grid = [tuple(p) for p in points if p != CENTROID or n % 3 == 0]
    assert len(on_grid) == (n + 1) * (n + 2) // 2
    assert torch.tensor(sorted(on_grid)).sub(torch.tensor(expected)).abs().max() < 1e-15
    assert all(abs(sum(p) - 1.0) < 1e-15 for p in points)
    assert sum(math.dist(p, CENTROID) < 1e-12 for p in points) == 1   # the centroid, once, on or off the grid
    for m in range(3):
        assert [1.0 if j == m else 0.0 for j in range(3)] in points   # vertices exactly one-hot
    with pytest.raises(UsageError, match="resolution"):
        simplex_grid(0)


def test_planar_baseline_is_the_plane_through_the_vertices():
    points = simplex_grid(6)
    vertex = [0.7, 1.9, 3.1]

    def plane(w):
        return sum(a * b for a, b in zip(w, vertex))

    # an affine surface lies on its plane: gap 0; add c * w0 w1 w2 and the gap is exactly that
    flat = Surface(points, [plane(w) for w in points], [0.5] * len(points))
    assert max(abs(g) for g in flat.loss_gap()) < 1e-12
    bump = Surface(points, [plane(w) + 27 * w[0] * w[1] * w[2] for w in points],
                   [0.9 - 2.7 * w[0] * w[1] * w[2] for w in points])
    assert bump.loss_gap() == pytest.approx([27 * w[0] * w[1] * w[2] for w in points], abs=1e-12)
    assert bump.accuracy_gap() == pytest.approx([2.7 * w[0] * w[1] * w[2] for w in points], abs=1e-12)
    summary = bump.summary()   # the maximum of w0 w1 w2 is at the centroid: 1/27
    assert summary["max_loss_gap"] == pytest.approx(1.0) and summary["max_loss_gap_at"] == pytest.approx(CENTROID)
    assert summary["centroid_loss_gap"] == pytest.approx(1.0)
    assert summary["centroid_accuracy"] == pytest.approx(0.8)


def test_surface_values_against_a_closed_form():
    """A linear classifier with zero weights: logits = sum_m w_m b_m, so the loss is a closed form."""
    dataset = load_dataset("digits")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    generator = torch.Generator().manual_seed(0)
    states = [{"1.weight": torch.zeros(10, 64), "1.bias": torch.randn(10, generator=generator)} for _ in range(3)]
    surface = simplex_surface(model, states, dataset, resolution=4)
    targets = dataset.test.targets
    for w, loss, accuracy in zip(surface.weights, surface.loss, surface.accuracy):
        bias = sum(wm * s["1.bias"].double() for wm, s in zip(w, states))            # (10,)
        log_probs = bias - torch.logsumexp(bias, 0)
        assert loss == pytest.approx(float(-log_probs[targets].mean()), rel=1e-5)
        assert accuracy == pytest.approx(float((targets == bias.argmax()).double().mean()))
    assert len(surface.weights) == 15 + 1                       # (4+1)(4+2)/2 and the centroid
    assert surface.info["resolution"] == 4 and surface.dataset == "digits"


def test_a_model_with_itself_is_flat_and_the_model_is_restored():
    model = build_example(find_spec("timm-vit"), seed=0)
    state = model.state_dict()                                  # live tensors of the model itself
    before = {k: v.clone() for k, v in state.items()}
    surface = simplex_surface(model, [state, state, state], load_dataset("digits"), resolution=3)
    assert max(abs(g) for g in surface.loss_gap()) < 1e-5
    assert max(abs(g) for g in surface.accuracy_gap()) < 1e-9
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(UsageError, match="exactly three"):
        simplex_surface(model, [state, state], "digits")


def test_json_round_trip_and_format_errors(tmp_path):
    points = simplex_grid(3)
    surface = Surface(points, [float(i) for i in range(len(points))], [0.1 * (i % 10) for i in range(len(points))],
                      dataset="digits", labels=["a", "b", "c"], info={"resolution": 3})
    path = surface.save(tmp_path / "s.json")
    assert Surface.load(path) == surface
    record = json.loads(path.read_text())
    assert record["format"] == "symdsl.simplex/1" and record["loss_gap"] == surface.loss_gap()
    report = json.loads(json.dumps(surfaces_record({"vanilla": surface, "universe": surface})))
    assert read_surfaces(report) == {"vanilla": surface, "universe": surface}
    with pytest.raises(UsageError, match="not a simplex surface"):
        Surface.from_dict({**record, "format": "symdsl.curve/1"})
    with pytest.raises(UsageError, match="not a simplex report"):
        read_surfaces({"format": "other", "surfaces": {}})
    with pytest.raises(UsageError, match="must include the three vertices"):
        Surface([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [1.0] * 3, [1.0] * 3)
    with pytest.raises(UsageError, match="not a barycentric point"):
        Surface([[0.5, 0.6, 0.0]], [1.0], [1.0])


def test_plot_is_written(tmp_path):
    points = simplex_grid(6)
    bumpy = Surface(points, [1.0 + 5 * w[0] * w[1] - 0.5 * w[2] * w[0] for w in points],
                    [0.9 - w[0] * w[1] for w in points])
    flat = Surface(points, [1.0] * len(points), [0.9] * len(points))   # no zero crossing: no contour to draw
    path = plot_simplex({"vanilla": bumpy, "itself": flat}, tmp_path / "deep" / "simplex.png", title="t")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    xs, ys = to_plane([CENTROID])
    assert (xs[0], ys[0]) == pytest.approx((0.5, math.sqrt(3) / 6))
    with pytest.raises(UsageError, match="at least one"):
        plot_simplex({}, tmp_path / "x.png")
