"""Datasets: digits split and normalisation, text tokenisation round trips, the stdlib corpus, the registry."""
from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest
import torch

from symdsl.data import Dataset, Split, load_dataset, stdlib_corpus, text_dataset
from symdsl.errors import UsageError
from symdsl.registry import Registries

# Shared data lives beside the repository (../shared/data), never inside it.
SHARED = Path(__file__).parents[2] / "shared" / "data"
SHAKESPEARE = SHARED / "tinyshakespeare.txt"
GPT2_TOKENIZER = SHARED / "gpt2_tokenizer"
needs_shared = pytest.mark.skipif(not SHAKESPEARE.is_file(), reason=f"shared data not found at {SHARED}")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def test_digits_sizes_shapes_and_types(digits):
    assert (len(digits.train), len(digits.test)) == (1437, 360)
    assert digits.train.inputs.shape == (1437, 1, 8, 8) and digits.train.inputs.dtype == torch.float32
    assert digits.test.targets.dtype == torch.int64
    assert (digits.task, digits.in_chans, digits.img_size, digits.num_classes) == ("classification", 1, 8, 10)


def test_digits_standardised_with_train_statistics(digits):
    assert abs(float(digits.train.inputs.mean())) < 1e-5
    assert float(digits.train.inputs.std()) == pytest.approx(1.0, abs=1e-4)


def test_digits_split_is_deterministic_and_depends_on_seed(digits):
    again = load_dataset("digits", seed=0)
    assert torch.equal(again.train.inputs, digits.train.inputs) and torch.equal(again.test.targets, digits.test.targets)
    other = load_dataset("digits", seed=1)
    assert not torch.equal(other.test.targets, digits.test.targets)


def test_digits_split_is_stratified(digits):
    train_counts = torch.bincount(digits.train.targets, minlength=10)
    test_counts = torch.bincount(digits.test.targets, minlength=10)
    share = test_counts.double() / (train_counts + test_counts).double()
    assert ((share - 0.2).abs() < 0.01).all(), share


def test_unshuffled_batches_cover_the_split_in_order(digits):
    batches = list(digits.batches("test", 100))
    assert [len(y) for _, y in batches] == [100, 100, 100, 60]
    assert torch.equal(torch.cat([y for _, y in batches]), digits.test.targets)
    assert len(list(digits.batches("test", 100, drop_last=True))) == 3


def test_shuffled_batches_are_a_seeded_permutation(digits):
    first = torch.cat([y for _, y in digits.batches("train", 64, shuffle=True, seed=3)])
    again = torch.cat([y for _, y in digits.batches("train", 64, shuffle=True, seed=3)])
    other = torch.cat([y for _, y in digits.batches("train", 64, shuffle=True, seed=4)])
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert torch.equal(first.sort().values, digits.train.targets.sort().values)


def test_batches_go_to_the_requested_device(digits):
    x, y = next(digits.batches("test", 8, device="cpu"))
    assert x.device.type == "cpu" and y.device.type == "cpu"


@needs_shared
def test_char_text_round_trip_and_split():
    text = SHAKESPEARE.read_text(encoding="utf-8")[:20_000]
    ds = load_dataset(f"text:{SHAKESPEARE}", max_chars=20_000, block_size=32)
    assert ds.tokenizer.chars == "".join(sorted(set(text)))
    assert ds.vocab_size == len(set(text))
    stream = torch.cat([ds.train.stream, ds.test.stream])
    assert ds.tokenizer.decode(stream) == text
    assert ds.train.stream.numel() == int(0.9 * len(text))  # first 90 % is train
    # test blocks: non-overlapping, targets are the inputs shifted by one token
    assert ds.test.inputs.shape[1] == 32
    assert torch.equal(ds.test.inputs.reshape(-1), ds.test.stream[: ds.test.inputs.numel()])
    assert torch.equal(ds.test.targets[:, :-1], ds.test.inputs[:, 1:])


@needs_shared
def test_language_model_train_batches_are_random_windows():
    ds = load_dataset(f"text:{SHAKESPEARE}", max_chars=20_000, block_size=16)
    x, y = next(ds.batches("train", 8, shuffle=True, seed=0))
    assert x.shape == y.shape == (8, 16) and x.dtype == torch.int64
    assert torch.equal(y[:, :-1], x[:, 1:])
    x2, _ = next(ds.batches("train", 8, shuffle=True, seed=1))
    assert not torch.equal(x, x2)


@pytest.mark.skipif(not GPT2_TOKENIZER.is_dir(), reason=f"GPT-2 tokenizer not found at {GPT2_TOKENIZER}")
def test_bpe_text_round_trip():
    ds = load_dataset(f"text:{SHAKESPEARE}", max_chars=5_000, block_size=32, tokenizer=str(GPT2_TOKENIZER))
    text = SHAKESPEARE.read_text(encoding="utf-8")[:5_000]
    assert ds.vocab_size == 50257
    stream = torch.cat([ds.train.stream, ds.test.stream])
    assert stream.numel() < len(text) / 2  # BPE tokens span several characters
    assert ds.tokenizer.decode(stream) == text
    assert ds.tokenizer.encode("First Citizen:") == stream[: len(ds.tokenizer.encode("First Citizen:"))].tolist()


def test_stdlib_corpus_exists_and_is_non_trivial():
    text = stdlib_corpus(200_000)
    assert len(text) == 200_000
    assert text.count("def ") > 100 and text.count("import ") > 20 and len(set(text)) > 80
    assert stdlib_corpus(200_000) == text
    ds = load_dataset("stdlib-text", max_chars=50_000, block_size=32)
    assert ds.task == "language_model" and ds.block_size == 32
    assert ds.tokenizer.decode(torch.cat([ds.train.stream, ds.test.stream])) == text[:50_000]


def test_text_dataset_rejects_too_short_text():
    with pytest.raises(UsageError, match="fewer than one block"):
        text_dataset("abc" * 10, block_size=16)


def test_unknown_dataset_suggests_the_closest_name():
    with pytest.raises(UsageError, match="did you mean 'digits'"):
        load_dataset("digts")


def test_unknown_option_suggests_the_closest_option():
    with pytest.raises(UsageError, match="did you mean 'seed'"):
        load_dataset("digits", sead=1)


def test_reference_arguments_are_checked():
    with pytest.raises(UsageError, match="needs an argument: 'text:PATH'"):
        load_dataset("text")
    with pytest.raises(UsageError, match="takes no argument"):
        load_dataset("digits:foo")
    with pytest.raises(UsageError, match="does not exist"):
        load_dataset("text:/no/such/file.txt")


def test_a_plugin_dataset_is_found_through_the_registries_and_duplicates_are_refused():
    def toy(*, n: int = 4) -> Dataset:
        split = Split(torch.zeros(n, 1, 2, 2), torch.zeros(n, dtype=torch.long))
        return Dataset("toy", "classification", split, split, in_chans=1, img_size=2, num_classes=1)

    registries = Registries.empty().add("dataset", "toy-test", toy, origin="test")
    assert len(load_dataset("toy-test", datasets=registries.datasets, n=6).train) == 6
    with pytest.raises(UsageError, match="unknown dataset 'toy-test'"):
        load_dataset("toy-test")                      # the built-in table alone does not have it
    with pytest.raises(ValueError, match="dataset 'toy-test' is contributed twice: by test and by other"):
        registries.add("dataset", "toy-test", toy, origin="other")


@pytest.mark.parametrize("module", ["__init__", "base", "digits", "text", "tokenizers", "corpus", "registry"])
def test_docstring_examples_run(module):
    name = "symdsl.data" if module == "__init__" else f"symdsl.data.{module}"
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
