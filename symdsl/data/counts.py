"""How often each token id occurs in a (masked) language-model split (data-aware weight matching reads it)."""
from __future__ import annotations

import torch

from ..errors import UsageError
from .base import TOKEN_TASKS, Dataset


def token_counts(dataset: Dataset, split: str = "train") -> torch.Tensor:
    """(vocab_size,) float64: occurrences of each token id in ``split``'s token stream (its
    non-overlapping sequences when it has no stream).

    >>> from symdsl.data import text_dataset
    >>> token_counts(text_dataset("abcab" * 20, block_size=4)).tolist()   # in the first 90 % of the text
    [36.0, 36.0, 18.0]
    """
    if dataset.task not in TOKEN_TASKS or dataset.vocab_size is None:
        raise UsageError(f"token counts need a language-model dataset with a vocabulary; '{dataset.name}' is "
                         f"{dataset.task}")
    part = dataset.split(split)
    ids = part.stream if part.stream is not None else part.inputs.reshape(-1)   # (N_tokens,)
    return torch.bincount(ids.reshape(-1), minlength=dataset.vocab_size).to(torch.float64)
