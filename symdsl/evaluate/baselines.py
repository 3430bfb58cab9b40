"""Reference losses that any trained model should beat (a sanity floor for benchmarks)."""
from __future__ import annotations

import torch

from ..data import IGNORE_INDEX, TOKEN_TASKS, Dataset, load_dataset
from ..errors import UsageError


def unigram_loss(dataset: Dataset | str, split: str = "test") -> float:
    """Cross-entropy on ``split``'s targets of the train split's class/token frequencies
    (add-one smoothed): the loss of a model that ignores its input.

    >>> from symdsl.data import text_dataset
    >>> round(unigram_loss(text_dataset("ab" * 200, block_size=8)), 3)   # two equally likely tokens
    0.693
    """
    dataset = load_dataset(dataset)
    size = dataset.vocab_size if dataset.task in TOKEN_TASKS else dataset.num_classes
    if size is None:
        raise UsageError(f"dataset '{dataset.name}' declares neither vocab_size nor num_classes")
    train = dataset.train.targets.reshape(-1)
    counts = torch.bincount(train[train != IGNORE_INDEX], minlength=size).double() + 1.0  # (size,)
    log_probs = counts.log() - counts.sum().log()
    targets = dataset.split(split).targets.reshape(-1)
    targets = targets[targets != IGNORE_INDEX]   # a masked LM scores its masked positions only
    return float(-log_probs[targets].mean())
