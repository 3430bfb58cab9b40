"""Tiny trainers: loss goes down, runs are reproducible from the seed, factories fit the datasets,
and two differently seeded ViTs have a clear vanilla-averaging barrier (what symdsl exists to remove)."""
from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest
import torch

from symdsl.data import load_dataset, text_dataset
from symdsl.errors import UsageError
from symdsl.evaluate import barrier, evaluate, loss_curve
from symdsl.experiments.train import DIGITS_VIT, lr_multiplier, small_gpt2, small_vit, train

SHAKESPEARE = Path(__file__).parents[2] / "shared" / "data" / "tinyshakespeare.txt"


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_a_few_steps_lower_the_training_loss(digits):
    model = small_vit(digits, seed=0)
    before = evaluate(model, digits, "train")["loss"]
    metrics = train(model, digits, steps=60, batch_size=64, lr=3e-3, schedule="constant", seed=0,
                    evaluate_split=None, threads=1)
    after = evaluate(model, digits, "train")["loss"]
    assert after < before - 0.3, (before, after)
    assert len(metrics["losses"]) == 60 and metrics["final_loss"] < metrics["first_loss"]


def test_training_is_reproducible_from_the_seed(digits):
    def run(seed: int):
        model = small_vit(digits, embed_dim=32, seed=seed)
        metrics = train(model, digits, steps=10, batch_size=32, seed=seed, evaluate_split=None)
        return model.state_dict(), metrics["losses"]

    state, losses = run(0)
    state_again, losses_again = run(0)
    assert losses == losses_again
    assert all(torch.equal(state[k], state_again[k]) for k in state)
    _, other_losses = run(1)
    assert other_losses != losses


def test_training_leaves_the_global_rng_and_thread_count_alone(digits):
    rng, threads = torch.get_rng_state(), torch.get_num_threads()
    train(small_vit(digits, embed_dim=32, seed=0), digits, steps=2, batch_size=16, evaluate_split=None,
          threads=threads + 1)
    assert torch.equal(torch.get_rng_state(), rng) and torch.get_num_threads() == threads


def test_train_reports_test_metrics_and_checks_arguments(digits):
    model = small_vit(digits, embed_dim=32, seed=0)
    metrics = train(model, digits, steps=3, batch_size=16, schedule="constant", warmup=1)
    assert {"test_loss", "test_accuracy", "seconds"} <= set(metrics) and not model.training
    with pytest.raises(UsageError, match="did you mean 'cosine'"):
        train(model, digits, steps=3, schedule="cosin")
    with pytest.raises(UsageError, match="steps must be at least 1"):
        train(model, digits, steps=0)


def test_lr_schedules():
    cosine = lr_multiplier("cosine", 101, warmup=10)
    assert [cosine(0), cosine(9), cosine(10)] == [0.1, 1.0, 1.0]
    assert cosine(100) == pytest.approx(0.0, abs=1e-12) and 0.4 < cosine(55) < 0.6
    assert lr_multiplier("constant", 5)(4) == 1.0


def test_small_vit_follows_the_dataset(digits):
    vit = small_vit(digits, seed=0)
    assert (vit.patch_embed.img_size, vit.num_classes, vit.global_pool) == ((8, 8), 10, "token")
    assert vit.cls_token is not None and len(vit.blocks) == 2 and vit.embed_dim == 64
    assert torch.equal(small_vit(digits, seed=0).cls_token, vit.cls_token)
    assert not torch.equal(small_vit(digits, seed=1).cls_token, vit.cls_token)
    with pytest.raises(UsageError, match="image classification"):
        small_vit(text_dataset("abcd" * 50, block_size=8))


def test_small_gpt2_follows_the_dataset_and_learns():
    if SHAKESPEARE.is_file():
        ds = load_dataset(f"text:{SHAKESPEARE}", max_chars=50_000, block_size=32)
    else:  # the stdlib corpus exists everywhere
        ds = load_dataset("stdlib-text", max_chars=50_000, block_size=32)
    model = small_gpt2(ds, n_embd=32, seed=0)
    config = model.config
    assert (config.vocab_size, config.n_positions, config.n_embd) == (ds.vocab_size, 32, 32)
    assert config.resid_pdrop == config.embd_pdrop == config.attn_pdrop == 0.0
    before = evaluate(model, ds, "test")["loss"]
    metrics = train(model, ds, steps=40, batch_size=16, lr=1e-2, seed=0, threads=1)
    assert metrics["test_loss"] < before - 0.5, (before, metrics["test_loss"])


def test_differently_seeded_vits_have_a_vanilla_averaging_barrier(digits):
    # 300 steps each: two good classifiers, whose plain average is a bad one.
    models = []
    for seed in (0, 1):
        model = small_vit(digits, seed=seed)
        metrics = train(model, digits, seed=seed, **{**DIGITS_VIT, "steps": 300})
        assert metrics["test_accuracy"] > 0.8, metrics["test_accuracy"]
        models.append(model)
    curve = loss_curve(models[0], models[0].state_dict(), models[1].state_dict(), digits, points=11)
    result = barrier(curve)
    assert result.loss > 0.5 and result.accuracy > 0.2, result
    assert 0.2 <= result.loss_lambda <= 0.8


@pytest.mark.parametrize("module", ["__init__", "loop", "models", "recipes", "symdsl.learn.schedule"])
def test_docstring_examples_run(module):
    name = "symdsl.experiments.train" if module == "__init__" else \
        module if module.startswith("symdsl.") else f"symdsl.experiments.train.{module}"
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
