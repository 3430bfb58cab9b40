"""Evaluation: exact cross-entropy against an independent float64 reference, interpolation, curves,
barrier definitions in closed form, JSON records and plots."""
from __future__ import annotations

import doctest
import importlib
import json
import math
from types import SimpleNamespace

import pytest
import torch

from symdsl.data import Dataset, Split, load_dataset, text_dataset
from symdsl.errors import UsageError
from symdsl.evaluate import (Curve, barrier, curves_record, evaluate, interpolate, loss_curve, plot_curves,
                             read_curves, unigram_loss, weighted_average)
from symdsl.experiments.train import small_vit


def _reference_cross_entropy(rows: list[list[float]], targets: list[int]) -> tuple[float, float]:
    # Independent of torch: log-sum-exp per row with the max subtracted, in Python floats.
    losses, hits = [], 0
    for row, target in zip(rows, targets):
        top = max(row)
        losses.append(top + math.log(sum(math.exp(v - top) for v in row)) - row[target])
        hits += max(range(len(row)), key=row.__getitem__) == target
    return sum(losses) / len(losses), hits / len(targets)


@pytest.fixture(scope="module")
def tiny_classification():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(13, 1, 2, 2, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 3, (13,), generator=generator)
    return Dataset("tiny", "classification", Split(x[:6], y[:6]), Split(x[6:], y[6:]),
                   in_chans=1, img_size=2, num_classes=3)


def _linear_model() -> torch.nn.Module:
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).double()


def test_evaluate_matches_hand_computed_cross_entropy(tiny_classification):
    model = _linear_model()
    w, b = model[1].weight.tolist(), model[1].bias.tolist()
    rows = [[sum(wi * xi for wi, xi in zip(w[c], x.flatten().tolist())) + b[c] for c in range(3)]
            for x in tiny_classification.test.inputs]
    loss, accuracy = _reference_cross_entropy(rows, tiny_classification.test.targets.tolist())
    for batch_size in (1, 3, 5, 100):  # uneven last batches must not bias the mean
        result = evaluate(model, tiny_classification, batch_size=batch_size)
        assert result["loss"] == pytest.approx(loss, rel=1e-12)
        assert result["accuracy"] == pytest.approx(accuracy)


class _BigramLM(torch.nn.Module):
    """A float64 table of next-token logits, called HF style: ``model(input_ids=...).logits``."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(vocab, vocab, dtype=torch.float64,
                                                    generator=torch.Generator().manual_seed(2)))

    def forward(self, input_ids):
        return SimpleNamespace(logits=self.table[input_ids])  # (B, T) -> (B, T, V)


def test_evaluate_language_model_is_next_token_cross_entropy():
    ds = text_dataset("the cat sat on the mat; the dog ate the hat. " * 6, block_size=7)
    model = _BigramLM(ds.vocab_size)
    table = model.table.tolist()
    inputs, targets = ds.test.inputs.reshape(-1).tolist(), ds.test.targets.reshape(-1).tolist()
    loss, accuracy = _reference_cross_entropy([table[i] for i in inputs], targets)
    for batch_size in (1, 2, 64):
        result = evaluate(model, ds, batch_size=batch_size)
        assert result["loss"] == pytest.approx(loss, rel=1e-12)
        assert result["accuracy"] == pytest.approx(accuracy)


def test_evaluate_restores_training_mode_and_limits_batches(tiny_classification):
    model = _linear_model().train()
    calls = []
    evaluate(model, tiny_classification, batch_size=2, max_batches=2, progress=lambda d, t: calls.append((d, t)))
    assert model.training and calls == [(1, 2), (2, 2)]


def test_unigram_loss_of_balanced_classes_is_log_classes():
    digits = load_dataset("digits")
    assert math.log(10) - 0.01 < unigram_loss(digits) < math.log(10) + 0.01


def test_interpolate_endpoints_are_exact_and_midpoint_is_the_mean():
    generator = torch.Generator().manual_seed(0)
    a = {"w": torch.randn(5, 3, generator=generator), "n": torch.tensor(7), "z": torch.tensor([-0.0, 1e-30])}
    b = {"w": torch.randn(5, 3, generator=generator), "n": torch.tensor(9), "z": torch.tensor([0.0, 3.0])}
    at_a, at_b, middle = interpolate(a, b, 1.0), interpolate(a, b, 0.0), interpolate(a, b, 0.5)
    for key in a:
        assert torch.equal(at_a[key], a[key]) and at_a[key] is not a[key]
    assert torch.equal(at_b["w"], b["w"]) and torch.equal(at_b["z"], b["z"])
    assert torch.equal(at_a["z"].signbit(), a["z"].signbit())  # bit-exact, even the sign of zero
    assert int(at_b["n"]) == 7 and int(middle["n"]) == 7  # integer buffers come from A
    assert torch.allclose(middle["w"], (a["w"] + b["w"]) / 2)


def test_interpolate_names_mismatched_keys_and_shapes():
    a = {"w": torch.zeros(2, 3), "b": torch.zeros(3)}
    with pytest.raises(UsageError, match="'b' is missing from B"):
        interpolate(a, {"w": torch.zeros(2, 3)}, 0.5)
    with pytest.raises(UsageError, match=r"'w': shape \(2, 3\) in A but \(3, 2\) in B"):
        interpolate(a, {"w": torch.zeros(3, 2), "b": torch.zeros(3)}, 0.5)


def test_weighted_average_of_n_states():
    states = [{"w": torch.full((2,), float(i))} for i in range(4)]
    assert torch.equal(weighted_average(states)["w"], torch.full((2,), 1.5))
    assert torch.allclose(weighted_average(states, [0.1, 0.2, 0.3, 0.4])["w"], torch.full((2,), 2.0))
    assert weighted_average(states, [0, 0, 1, 0])["w"] is not states[2]["w"]
    with pytest.raises(UsageError, match="sum to 2"):
        weighted_average(states, [0.5, 0.5, 0.5, 0.5])
    with pytest.raises(UsageError, match="3 weights for 4"):
        weighted_average(states, [0.5, 0.25, 0.25])


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_barrier_of_a_model_with_itself_is_zero(digits):
    model = small_vit(digits, embed_dim=32, seed=0)
    state = model.state_dict()
    curve = loss_curve(model, state, state, digits, points=5)
    for definition in ("linear", "mean"):
        result = barrier(curve, definition)
        assert result.loss == pytest.approx(0.0, abs=1e-6)
        assert result.accuracy == pytest.approx(0.0, abs=1e-9)


def test_loss_curve_endpoints_progress_and_restored_weights(digits):
    model_a, model_b = small_vit(digits, embed_dim=32, seed=0), small_vit(digits, embed_dim=32, seed=1)
    before = {k: v.clone() for k, v in model_a.state_dict().items()}
    calls = []
    # model_a.state_dict() aliases model_a's live weights: the curve must not be fooled by that
    curve = loss_curve(model_a, model_a.state_dict(), model_b.state_dict(), digits, points=3,
                       progress=lambda done, total: calls.append((done, total)))
    assert curve.lambdas == [0.0, 0.5, 1.0] and calls == [(1, 3), (2, 3), (3, 3)]
    assert all(torch.equal(before[k], v) for k, v in model_a.state_dict().items())
    assert curve.at(1.0) == tuple(evaluate(model_a, digits).values())
    assert curve.at(0.0) == tuple(evaluate(model_b, digits).values())


# A hand-made curve where the two definitions differ: B (lam 0) has loss 1.0 and accuracy 0.9,
# A (lam 1) loss 2.0 and accuracy 0.7.
HAND = Curve(lambdas=[0.0, 0.25, 0.5, 0.75, 1.0], loss=[1.0, 2.0, 1.8, 1.9, 2.0],
             accuracy=[0.9, 0.5, 0.6, 0.65, 0.7])


def test_linear_barrier_closed_form():
    # loss reference 1 + lam: gaps 0, 0.75, 0.3, 0.15, 0 ; accuracy reference 0.9 - 0.2 lam:
    # gaps 0, 0.35, 0.2, 0.1, 0
    result = barrier(HAND)
    assert (result.loss, result.loss_lambda) == (pytest.approx(0.75), 0.25)
    assert (result.accuracy, result.accuracy_lambda) == (pytest.approx(0.35), 0.25)


def test_mean_barrier_closed_form():
    # loss reference 1.5: gaps -0.5, 0.5, 0.3, 0.4, 0.5 ; accuracy reference 0.8: gaps -0.1, 0.3, 0.2, 0.15, 0.1
    result = barrier(HAND, "mean")
    assert result.loss == pytest.approx(0.5) and result.loss_lambda == 0.25
    assert result.accuracy == pytest.approx(0.3)
    assert result.to_dict()["definition"] == "mean"


def test_barrier_errors():
    with pytest.raises(UsageError, match="did you mean 'linear'"):
        barrier(HAND, "lineer")
    with pytest.raises(UsageError, match="no point at lambda=1"):
        barrier(Curve([0.0, 0.5], [1.0, 2.0], [0.5, 0.5]))


def test_curve_records_are_json():
    record = json.loads(json.dumps(curves_record({"vanilla": HAND}, info={"pair": "toy"})))
    assert record["curves"]["vanilla"]["barrier"]["linear"]["loss"] == pytest.approx(0.75)
    assert record["curves"]["vanilla"]["barrier"]["mean"]["loss"] == pytest.approx(0.5)
    assert read_curves(record)["vanilla"] == HAND


def test_curve_save_and_load(tmp_path):
    assert Curve.load(HAND.save(tmp_path / "curve.json")) == HAND


@pytest.mark.parametrize("name, magic", [("curves.png", b"\x89PNG\r\n\x1a\n"), ("curves.pdf", b"%PDF"),
                                         ("curves.svg", b"<?xml")])
def test_plot_writes_the_format_its_extension_names(tmp_path, name, magic):
    flat = Curve([0.0, 0.25, 0.5, 0.75, 1.0], [1.0, 1.1, 1.2, 1.1, 2.0], [0.9, 0.85, 0.8, 0.75, 0.7])
    path = plot_curves({"vanilla": HAND, "weight matching": flat}, tmp_path / "sub" / name, title="toy")
    data = path.read_bytes()
    assert data.startswith(magic) and len(data) > 5_000


def test_the_plot_quotes_each_barrier_and_runs_from_a_to_b(tmp_path):
    # lambda 1 is A: on the plot A sits at t = 0; the legend quotes the paper-definition barrier
    skewed = Curve([0.0, 0.25, 0.5, 0.75, 1.0], [2.0, 1.9, 1.8, 1.6, 1.0], [0.5, 0.55, 0.6, 0.7, 0.9])
    svg = plot_curves({"aligned": skewed}, tmp_path / "c.svg").read_text()
    found = barrier(skewed)
    assert f"loss barrier {found.loss:.3f}" in svg and "t  (0 = model A, 1 = model B)" in svg
    with pytest.raises(UsageError, match=r"\.png, \.pdf, \.svg"):
        plot_curves({"aligned": skewed}, tmp_path / "c.jpeg")


def test_read_curves_reads_what_barrier_json_writes(tmp_path):
    # symdsl barrier --json adds the alignment and both barrier definitions next to each curve
    entry = {**HAND.to_dict(), "barrier": barrier(HAND).to_dict(), "barrier_mean": barrier(HAND, "mean").to_dict()}
    path = tmp_path / "barrier.json"
    path.write_text(json.dumps({"a": "A", "b": "B", "alignment": {"spec": "x"}, "curves": {"vanilla": entry}}))
    assert read_curves(path) == {"vanilla": HAND}
    with pytest.raises(UsageError, match="'curves' entry"):
        read_curves({"a": "A"})


@pytest.mark.parametrize("module", ["__init__", "forward", "metrics", "interpolate", "curve", "barrier", "baselines",
                                    "record", "plot"])
def test_docstring_examples_run(module):
    name = "symdsl.evaluate" if module == "__init__" else f"symdsl.evaluate.{module}"
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_default_batch_size_bounds_language_model_logits():
    from symdsl.evaluate.metrics import default_batch_size

    tokens = torch.zeros(4, 64, dtype=torch.long)
    bpe_sized = Dataset("bpe", "language_model", Split(tokens, tokens), Split(tokens, tokens),
                        vocab_size=50257, block_size=64)
    assert default_batch_size(bpe_sized) == 10  # 10 * 64 * 50257 logits fit in 2^25
    assert default_batch_size(load_dataset("digits")) == 256


class _PlainLM(torch.nn.Module):
    """A language model written as a plain module: forward(self, tokens), no `input_ids` keyword."""

    def __init__(self, vocab: int):
        super().__init__()
        self.embed, self.out = torch.nn.Embedding(vocab, 8), torch.nn.Linear(8, vocab)

    def forward(self, tokens):
        return self.out(self.embed(tokens))


def test_a_plain_module_language_model_is_called_with_its_own_argument():
    ds = text_dataset("abcabcabd" * 40, block_size=8)
    model = _PlainLM(ds.vocab_size)
    result = evaluate(model, ds)
    inputs, targets = ds.test.inputs, ds.test.targets
    with torch.no_grad():
        logits = model(inputs)
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, ds.vocab_size), targets.reshape(-1))
    assert result["loss"] == pytest.approx(float(expected), rel=1e-6)
