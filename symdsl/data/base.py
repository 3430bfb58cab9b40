"""The Dataset interface: a task, a train and a test split held as tensors, and batch iterators.

Two tasks, one batch format, so that training and evaluation need no per-task code paths:
every batch is ``(inputs, targets)``.

- ``classification``: inputs ``(B, C, H, W)`` float32, targets ``(B,)`` int64 class ids.
- ``language_model``: inputs ``(B, T)`` int64 token ids, targets ``(B, T)`` int64, the same
  tokens shifted left by one (targets[b, t] is the token that follows inputs[b, t]),
  with ``T = block_size`` so that a model with ``n_positions = block_size`` reads every input.
- ``masked_language_model``: inputs ``(B, T)`` int64 token ids with some positions masked,
  targets ``(B, T)`` int64, the original ids there and ``IGNORE_INDEX`` elsewhere
  (:mod:`symdsl.data.masked`).

Targets equal to ``IGNORE_INDEX`` (-100, ``cross_entropy``'s default ``ignore_index``) are not
scored: losses and accuracies are over the other positions.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from ..errors import UsageError

TASKS = ("classification", "language_model", "masked_language_model")
# Tasks whose inputs are token ids (B, T) and whose logits are (B, T, vocab_size).
TOKEN_TASKS = ("language_model", "masked_language_model")
IGNORE_INDEX = -100
SPLITS = ("train", "test")


@dataclass(frozen=True)
class Split:
    """One split of a dataset, fully in memory.

    ``inputs`` and ``targets`` share their first dimension N (examples, or for language models
    the non-overlapping sequences cut from the split's token stream). Language models also keep
    ``stream``, the split's whole token sequence ``(N_tokens,)``, from which shuffled batches
    draw random windows.

    >>> s = Split(torch.zeros(3, 1, 8, 8), torch.tensor([0, 1, 2]))
    >>> len(s)
    3
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    stream: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.inputs.shape[0] != self.targets.shape[0]:
            raise UsageError(f"split has {self.inputs.shape[0]} inputs but {self.targets.shape[0]} targets")

    def __len__(self) -> int:
        return int(self.inputs.shape[0])


@dataclass
class Dataset:
    """A dataset: name, task, ``train`` and ``test`` splits, and the sizes models are built from.

    Language models set ``vocab_size`` and ``block_size``; image classifiers set ``in_chans``,
    ``img_size`` and ``num_classes``. ``tokenizer`` (language models) turns text into ids and
    back (``encode``/``decode``). ``info`` holds provenance (source, seed, normalisation ...).

    >>> x = torch.randn(10, 1, 8, 8); y = torch.arange(10) % 2
    >>> ds = Dataset("toy", "classification", Split(x[:8], y[:8]), Split(x[8:], y[8:]),
    ...              in_chans=1, img_size=8, num_classes=2)
    >>> [tuple(t.shape) for t in next(ds.batches("train", 4))]
    [(4, 1, 8, 8), (4,)]
    """

    name: str
    task: str
    train: Split
    test: Split
    vocab_size: int | None = None
    block_size: int | None = None
    in_chans: int | None = None
    img_size: int | None = None
    num_classes: int | None = None
    tokenizer: Any = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise UsageError(f"dataset '{self.name}': task must be one of {TASKS}, not '{self.task}'")
        if self.task in TOKEN_TASKS and (self.vocab_size is None or self.block_size is None):
            raise UsageError(f"dataset '{self.name}': a {self.task} dataset needs vocab_size and block_size")

    def split(self, name: str) -> Split:
        """The split called ``name`` ("train" or "test")."""
        if name not in SPLITS:
            raise UsageError(f"dataset '{self.name}' has no split '{name}'; choose one of {SPLITS}")
        return getattr(self, name)

    def batches(self, split: str, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                device: torch.device | str | None = None,
                drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Iterate once over ``split`` in batches of ``(inputs, targets)`` on ``device``.

        One pass yields ceil(N / batch_size) batches (floor with ``drop_last``), N = len(split).
        Unshuffled: the examples (or non-overlapping sequences) in order, the last batch possibly
        smaller, so every example is seen once. Shuffled, with a ``seed``: classification
        permutes the examples; language models draw N random windows of ``block_size + 1``
        tokens from the split's stream (new offsets each seed), the usual way to train them.

        >>> ds = Dataset("toy", "classification", Split(torch.zeros(5, 1, 2, 2), torch.zeros(5, dtype=torch.long)),
        ...              Split(torch.zeros(1, 1, 2, 2), torch.zeros(1, dtype=torch.long)))
        >>> [len(y) for _, y in ds.batches("train", 2)]
        [2, 2, 1]
        """
        if batch_size < 1:
            raise UsageError(f"batch_size must be at least 1, not {batch_size}")
        part = self.split(split)
        n = len(part)
        generator = torch.Generator().manual_seed(seed)
        stop = n - n % batch_size if drop_last else n
        if shuffle and part.stream is not None:
            yield from self._random_windows(part.stream, n, stop, batch_size, generator, device)
            return
        order = torch.randperm(n, generator=generator) if shuffle else None
        for start in range(0, stop, batch_size):
            end = min(start + batch_size, stop)
            index = slice(start, end) if order is None else order[start:end]
            yield part.inputs[index].to(device), part.targets[index].to(device)

    def _random_windows(self, stream, n, stop, batch_size, generator, device):
        # A window is block_size + 1 tokens: inputs are the first T, targets the last T.
        span = self.block_size + 1
        if stream.numel() < span:
            raise UsageError(f"dataset '{self.name}': stream of {stream.numel()} tokens is shorter than "
                             f"one window of {span}")
        offsets = torch.randint(0, stream.numel() - span + 1, (n,), generator=generator)
        steps = torch.arange(span)
        for start in range(0, stop, batch_size):
            windows = stream[offsets[start:start + batch_size, None] + steps]  # (B, T + 1)
            yield windows[:, :-1].to(device), windows[:, 1:].to(device)

    def summary(self) -> dict[str, Any]:
        """A JSON-serialisable description (name, task, sizes, split lengths, info).

        >>> ds = Dataset("toy", "classification", Split(torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.long)),
        ...              Split(torch.zeros(1, 1, 2, 2), torch.zeros(1, dtype=torch.long)), num_classes=2)
        >>> ds.summary()["train_size"]
        2
        """
        sizes = {key: getattr(self, key) for key in ("vocab_size", "block_size", "in_chans", "img_size", "num_classes")
                 if getattr(self, key) is not None}
        return {"name": self.name, "task": self.task, **sizes, "train_size": len(self.train),
                "test_size": len(self.test), "info": dict(self.info)}
