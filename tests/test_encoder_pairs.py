"""benchmarks/encoder_pairs.py on a tiny pair: every method row is measured, the table and the JSON
block are written from it. (The benchmark itself, with trained models, is not a test.)"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from symdsl.data import masked_text_dataset
from symdsl.experiments.train import small_roberta, train

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import encoder_pairs  # noqa: E402

TEXT = "Come, my lord, and let us walk. Now is the winter of our discontent.\n" * 20


@pytest.fixture(scope="module")
def measured():
    data = masked_text_dataset(TEXT, block_size=16)
    models = [small_roberta(data, hidden_size=16, intermediate_size=32, num_attention_heads=2, seed=s) for s in (0, 1)]
    for seed, model in enumerate(models):
        train(model, data, steps=20, batch_size=16, lr=3e-3, seed=seed, threads=1)
    return data, encoder_pairs.measure_pair(models, data, learn_steps=2, say=lambda line: None)


def test_every_method_gets_a_barrier_on_the_same_endpoints(measured):
    _, rows = measured
    assert list(rows) == [label for label, *_ in encoder_pairs.METHODS]
    for label, row in rows.items():
        assert len(row["curve"]) == 11 and row["loss"] >= 0.0 and row["seconds"] >= 0.0, label
        # the endpoints are the same two models up to a symmetry: lam = 1 is model 0 in every row
        assert row["curve"][-1] == pytest.approx(rows["vanilla averaging"]["curve"][-1], rel=1e-5)
    # a learned row's time includes the weight matching it starts from
    assert rows["learned matching, full"]["seconds"] >= rows["weight matching, full"]["seconds"]


def test_the_table_has_one_row_per_method_and_names_the_post_ln_residual(measured):
    data, rows = measured
    summary = encoder_pairs.summarise([rows])
    block = {"pairs": 1, "width": 16, "corpus": "a test text", "block_size": data.block_size, "unigram": 3.0,
             "learn_steps": 2, "test_loss": [[2.0, 2.1]], "test_accuracy": [[0.4, 0.41]], "rows": summary}
    machine = {"cpu": "cpu", "cores": 2, "torch": "2", "load": [1.0, 1.0, 1.0], "seconds": 1.0}
    table = encoder_pairs.markdown(block, machine, "python benchmarks/encoder_pairs.py")
    assert table.count("\n| ") == len(encoder_pairs.METHODS) + 1                   # header + one row each
    assert "1 independent pair of 2 x 16" in table and "residual stream's site is a permutation" in table
    assert f"{summary['vanilla averaging']['loss_mean']:.3f} ± 0.000" in table
