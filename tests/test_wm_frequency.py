"""Data-aware weight matching (weight_frequency): vocabulary rows weighted by train-split token counts.

The weighting scales rows of axes no site acts on by sqrt(w) before matching; these tests prove
in float64 that this minimises the weighted objective exactly (brute force vs the scaled route),
that never-seen rows of pure noise no longer move the residual rotation, that without data or
file nothing changes, and that a file which does not fit the vocabulary is refused clearly."""
from __future__ import annotations

import json

import pytest
import torch

import symdsl
from conftest import REGISTRIES, relative_distance
from symdsl.act import act_state_dict, random_transform
from symdsl.api.pipeline import match, prepare
from symdsl.canon import canonicalize
from symdsl.data import text_dataset, token_counts
from symdsl.errors import UsageError
from symdsl.experiments.train import small_gpt2
from symdsl.models.build import perturb_parameters
from symdsl.spec import resolve

from symdsl_builtins.matchers.weight_frequency import read_counts, row_weights, weigh_rows

# 'QXZJK' occur only in the last tenth of the text (the test split): never-seen vocabulary rows
TEXT = "the quick brown fox jumps over a lazy dog; to be or not to be, that is it. " * 12 + "QXZJK QXZJK QXZJK"
UNSEEN = "QXZJK"


@pytest.fixture(scope="module")
def dataset():
    return text_dataset(TEXT, block_size=16)


def _gpt2(dataset, seed=0):
    model = small_gpt2(dataset, n_embd=32, n_layer=2, n_head=4, seed=seed)
    return perturb_parameters(model, seed=seed).double().eval()


@pytest.fixture(scope="module")
def setting(dataset):
    model = _gpt2(dataset)
    resolved = resolve(symdsl.find_spec("hf-gpt2"), model, registries=REGISTRIES)
    canonicalize(model, resolved)
    a = {k: v.detach().clone() for k, v in model.state_dict().items()}
    hidden = random_transform(resolved, seed=3, nontrivial=True)
    b = act_state_dict(resolved, a, hidden)
    unseen = torch.tensor([dataset.tokenizer.encode(c)[0] for c in UNSEEN])
    return resolved, a, b, unseen


def _weighted_objective(resolved, a, b, elements, weights):
    """sum_t sum_r w_t[r] ||A_t[r] - act(g, B)_t[r]||^2, computed row by row (no scaling trick)."""
    moved = act_state_dict(resolved, b, elements)
    total = 0.0
    for name in resolved.tensors:
        diff = (a[name] - moved[name]) ** 2
        axes = [axis for (t, axis) in weights if t == name]
        if axes:
            (axis,) = axes
            per_row = diff.movedim(axis, 0).reshape(diff.shape[axis], -1).sum(1)     # (rows,)
            total += float((weights[(name, axis)] * per_row).sum())
        else:
            total += float(diff.sum())
    return total


def _noisy(b, unseen, vocab_rows, scale=5.0):
    """B with the never-seen vocabulary rows replaced by large noise (what an untrained row looks like)."""
    noisy = dict(b)
    generator = torch.Generator().manual_seed(11)
    for name in vocab_rows:
        t = b[name].clone()
        t[unseen] = scale * torch.randn(len(unseen), t.shape[1], generator=generator, dtype=t.dtype)
        noisy[name] = t
    return noisy


def _seen_distance(resolved, x, y, unseen, vocab_rows):
    """relative distance over the spec's tensors, leaving the never-seen vocabulary rows out."""
    keep = {}
    for name in resolved.tensors:
        xs, ys = x[name], y[name]
        if name in vocab_rows:
            mask = torch.ones(xs.shape[0], dtype=torch.bool)
            mask[unseen] = False
            xs, ys = xs[mask], ys[mask]
        keep[name] = (xs, ys)
    num = sum(float(((xs - ys) ** 2).sum()) for xs, ys in keep.values())
    return (num / sum(float((ys ** 2).sum()) for _, ys in keep.values())) ** 0.5


def test_the_vocabulary_axes_get_train_split_counts_and_unseen_rows_weight_zero(dataset, setting):
    resolved, _, _, unseen = setting
    weights = row_weights(resolved, dataset=dataset, weighting="counts")
    assert set(weights) == {("transformer.wte.weight", 0), ("lm_head.weight", 0)}   # positions: block = n_positions
    w = weights[("transformer.wte.weight", 0)]
    assert bool((w[unseen] == 0).all()) and bool((w > 0).sum() == dataset.vocab_size - len(UNSEEN))
    assert float(w.sum()) == pytest.approx(dataset.vocab_size - len(UNSEEN))     # total = seen ids
    counts = token_counts(dataset)
    seen = counts > 0
    assert torch.allclose(w[seen] / w[seen][0], counts[seen] / counts[seen][0])   # proportional to counts


@pytest.mark.parametrize("weighting", ["counts", "sqrt", "mask"])
def test_scaled_rows_give_exactly_the_weighted_objective(dataset, setting, weighting):
    resolved, a, b, unseen = setting
    weights = row_weights(resolved, dataset=dataset, weighting=weighting)
    b = _noisy(b, unseen, ["transformer.wte.weight", "lm_head.weight"])
    sa, sb = weigh_rows(a, weights), weigh_rows(b, weights)
    for seed in range(3):                     # any element: the identity of the two objectives is exact
        g = random_transform(resolved, seed=seed)
        brute = _weighted_objective(resolved, a, b, g, weights)
        scaled = sum(float(((sa[n] - act_state_dict(resolved, sb, g)[n]) ** 2).sum()) for n in resolved.tensors)
        assert scaled == pytest.approx(brute, rel=1e-12)
    # and what the matcher reports as its objective is the weighted objective of the element it returns
    result = REGISTRIES.matchers["weight"].match(resolved, a, b, dataset=dataset, token_weighting=weighting)
    assert result.objective[-1] == pytest.approx(_weighted_objective(resolved, a, b, result.elements, weights),
                                                 rel=1e-9)


def test_never_seen_noise_rows_no_longer_move_the_rotation(dataset, setting):
    resolved, a, b, unseen = setting
    vocab_rows = ["transformer.wte.weight", "lm_head.weight"]
    noisy = _noisy(b, unseen, vocab_rows)
    matcher = REGISTRIES.matchers["weight"]
    plain = matcher.match(resolved, a, noisy)
    weighted = matcher.match(resolved, a, noisy, dataset=dataset)
    plain_distance = _seen_distance(resolved, act_state_dict(resolved, noisy, plain.elements), a, unseen, vocab_rows)
    weighted_distance = _seen_distance(resolved, act_state_dict(resolved, noisy, weighted.elements), a, unseen,
                                       vocab_rows)
    assert plain_distance > 1e-2           # 5 noise rows out of 37 pull the unweighted rotation away
    assert weighted_distance < 1e-6        # weighted: the hidden element is recovered on everything trained
    # the clean pair is still recovered exactly with the weighting on
    clean = matcher.match(resolved, a, b, dataset=dataset)
    assert relative_distance(resolved, act_state_dict(resolved, b, clean.elements), a) < 1e-6


def test_without_data_or_file_matching_is_unchanged(dataset, setting):
    resolved, a, b, unseen = setting
    noisy = _noisy(b, unseen, ["transformer.wte.weight", "lm_head.weight"])
    matcher = REGISTRIES.matchers["weight"]
    plain = matcher.match(resolved, a, noisy)
    off = matcher.match(resolved, a, noisy, dataset=dataset, token_weighting="none")
    weighted = matcher.match(resolved, a, noisy, dataset=dataset)
    assert plain.objective == off.objective
    assert all(torch.equal(plain.elements[s], off.elements[s]) for s in plain.elements)
    assert not torch.allclose(plain.elements["resid"], weighted.elements["resid"])


def test_the_pipeline_passes_data_to_weight_matching(dataset):
    models = [_gpt2(dataset, seed=0), _gpt2(dataset, seed=1)]
    prepared = prepare(models, "hf-gpt2")
    without = match(prepared, 1, "weight")
    direct = REGISTRIES.matchers["weight"].match(prepared.resolved, prepared.states[0], prepared.states[1])
    assert torch.equal(without.elements["resid"], direct.elements["resid"])        # no data: as before
    given = match(prepared, 1, "weight", data=dataset)
    direct = REGISTRIES.matchers["weight"].match(prepared.resolved, prepared.states[0], prepared.states[1],
                                                 dataset=dataset)
    assert torch.equal(given.elements["resid"], direct.elements["resid"])
    assert not torch.equal(given.elements["resid"], without.elements["resid"])


def test_a_counts_file_weighs_like_the_data(tmp_path, dataset, setting):
    from safetensors.torch import save_file

    resolved, a, b, unseen = setting
    noisy = _noisy(b, unseen, ["transformer.wte.weight", "lm_head.weight"])
    counts = token_counts(dataset)
    as_list, as_dict, as_tensor = tmp_path / "c.json", tmp_path / "d.json", tmp_path / "c.safetensors"
    as_list.write_text(json.dumps(counts.tolist()))
    as_dict.write_text(json.dumps({str(i): c for i, c in enumerate(counts.tolist()) if c}))
    save_file({"counts": counts.to(torch.float32)}, str(as_tensor))
    matcher = REGISTRIES.matchers["weight"]
    expected = matcher.match(resolved, a, noisy, dataset=dataset).elements["resid"]
    for path in (as_list, as_tensor):
        assert torch.allclose(matcher.match(resolved, a, noisy, token_weights=str(path)).elements["resid"], expected)
    # an {id: count} object lists only the ids seen (missing ids read as 0)
    from_dict = read_counts(as_dict)
    assert torch.equal(from_dict, counts[:from_dict.numel()]) and not bool(counts[from_dict.numel():].any())


def test_a_file_that_does_not_fit_the_vocabulary_is_refused_naming_it(tmp_path, setting):
    resolved, a, b, _ = setting
    path = tmp_path / "counts.json"
    path.write_text(json.dumps([1.0] * 5))
    with pytest.raises(UsageError) as err:
        REGISTRIES.matchers["weight"].match(resolved, a, b, token_weights=str(path))
    message = str(err.value)
    vocab = a["transformer.wte.weight"].shape[0]
    assert str(path) in message and "5 entries" in message and f"{vocab} ids" in message
    for bad, words in ((tmp_path / "x.txt", "suffix"), (tmp_path / "neg.json", "negative")):
        bad.write_text(json.dumps([-1.0] * vocab))
        with pytest.raises(UsageError, match=words):
            REGISTRIES.matchers["weight"].match(resolved, a, b, token_weights=str(bad))


def test_positions_beyond_the_data_s_blocks_get_weight_zero(dataset):
    short = text_dataset(TEXT, block_size=8)            # the model has 16 positions, the data uses 8
    model = _gpt2(dataset)
    resolved = resolve(symdsl.find_spec("hf-gpt2"), model, registries=REGISTRIES)
    weights = row_weights(resolved, dataset=short, weighting="mask")
    assert weights[("transformer.wpe.weight", 0)].tolist() == [1.0] * 8 + [0.0] * 8


def test_data_whose_vocabulary_fits_no_axis_weighs_nothing_and_says_so(setting, caplog):
    resolved, a, b, _ = setting
    padded = text_dataset("to be or not to be, " * 30, block_size=8)    # fewer ids than the model's 37 rows
    assert padded.vocab_size < a["transformer.wte.weight"].shape[0]
    with caplog.at_level("WARNING", logger="symdsl.weight"):
        assert row_weights(resolved, dataset=padded) == {}
    assert f"{padded.vocab_size} token ids" in caplog.text and "token_weights=FILE" in caplog.text
