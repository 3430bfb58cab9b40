"""The ``masked_language_model`` task: character text with BERT's masking, for encoders such as RoBERTa.

A batch is ``(inputs, targets)``, both ``(B, T)`` int64: ``inputs`` are token ids with about
``mask_fraction`` (15 %) of the positions chosen and, of those, 80 % replaced by ``<mask>``,
10 % by a random character and 10 % left as they are (BERT's 80/10/10 rule); ``targets`` hold
the original ids at the chosen positions and ``IGNORE_INDEX`` (-100) everywhere else, so the
loss (``cross_entropy``'s default ``ignore_index``) and the accuracy are over chosen positions.

Vocabulary: ``<mask>`` = 0, ``<pad>`` = 1, then the text's characters from 2. RoBERTa counts
position ids from ``pad_token_id + 1``, so with the pad at 1 a block of T tokens needs
``T + 2`` positions, as in the released RoBERTa models. No ``<cls>``: the masked-LM loss
reads every position and nothing classifies the sequence. No input ever holds ``<pad>``:
blocks are always full, so RoBERTa's position ids are simply 2 .. T + 1.

Masks: the test split is masked once, from ``mask_seed``, so every evaluation (every point of
a loss curve, every model) scores the same problem. Shuffled train batches draw random
windows of the train stream and mask them afresh from the batch stream's seed (RoBERTa's
dynamic masking), unless ``dynamic=False``, which shuffles fixed, pre-masked train blocks.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ..errors import UsageError
from .base import IGNORE_INDEX, Dataset, Split
from .tokenizers import CharTokenizer

SPECIAL_TOKENS = ("<mask>", "<pad>")
MASK_ID, PAD_ID = 0, 1
# BERT's split of the chosen positions: replaced by <mask>, by a random token, kept.
MASK_SHARE, RANDOM_SHARE = 0.8, 0.1


class MaskedCharTokenizer:
    """Characters after two special tokens: ``<mask>`` (0), ``<pad>`` (1), then the characters.

    >>> tok = MaskedCharTokenizer.from_text("hello")
    >>> tok.encode("hole"), tok.decode([0, 3, 1]), tok.vocab_size
    ([3, 5, 4, 2], '<mask>h<pad>', 6)
    """

    kind = "char+mlm"
    mask_id, pad_id = MASK_ID, PAD_ID

    def __init__(self, chars: str) -> None:
        self.base = CharTokenizer(chars)
        self.chars = chars
        self.first = len(SPECIAL_TOKENS)  # id of the first character

    @classmethod
    def from_text(cls, text: str) -> "MaskedCharTokenizer":
        """The tokenizer whose characters are those of ``text``, sorted."""
        return cls(CharTokenizer.from_text(text).chars)

    @property
    def vocab_size(self) -> int:
        return self.first + self.base.vocab_size

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (characters only; a character outside the vocabulary is an error)."""
        return [i + self.first for i in self.base.encode(text)]

    def decode(self, ids) -> str:
        """The text of token ids, special tokens written as ``<mask>`` / ``<pad>``."""
        return "".join(SPECIAL_TOKENS[int(i)] if int(i) < self.first else self.chars[int(i) - self.first] for i in ids)


def mask_tokens(ids: torch.Tensor, generator: torch.Generator, *, fraction: float = 0.15,
                random_range: tuple[int, int], mask_id: int = MASK_ID) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking of ``ids`` (B, T): each position is chosen with probability ``fraction``;
    a chosen one becomes ``mask_id`` (80 %), a random id in ``random_range`` [low, high) (10 %)
    or stays (10 %). Returns ``(inputs, targets)``, targets ``IGNORE_INDEX`` where not chosen.

    >>> g = torch.Generator().manual_seed(0)
    >>> inputs, targets = mask_tokens(torch.full((4, 1000), 7), g, random_range=(2, 9))
    >>> 0.13 < float((targets != -100).float().mean()) < 0.17, bool((targets[targets != -100] == 7).all())
    (True, True)
    """
    chosen = torch.rand(ids.shape, generator=generator) < fraction        # (B, T) bool
    roll = torch.rand(ids.shape, generator=generator)                     # (B, T): which of 80/10/10
    randoms = torch.randint(*random_range, ids.shape, generator=generator)  # (B, T) replacement ids
    inputs = ids.clone()
    inputs[chosen & (roll < MASK_SHARE)] = mask_id
    swap = chosen & (roll >= MASK_SHARE) & (roll < MASK_SHARE + RANDOM_SHARE)
    inputs[swap] = randoms[swap]
    targets = torch.where(chosen, ids, torch.full_like(ids, IGNORE_INDEX))
    return inputs, targets


@dataclasses.dataclass
class MaskedDataset(Dataset):
    """A :class:`Dataset` of task ``masked_language_model`` whose train batches are re-masked per pass.

    ``mask_fraction``: share of positions chosen; ``mask_seed``: seeds the fixed masks of the
    unshuffled splits (test: ``mask_seed``, train: ``mask_seed + 1``); ``dynamic``: re-mask
    shuffled train windows (True) or shuffle the fixed train blocks (False);
    ``random_range``: the ids a chosen token may be swapped for (the characters, never a special).

    >>> ds = masked_text_dataset("to be or not to be " * 40, block_size=16)
    >>> x, y = next(ds.batches("train", 8, shuffle=True, seed=3))
    >>> tuple(x.shape), tuple(y.shape), ds.task
    ((8, 16), (8, 16), 'masked_language_model')
    """

    mask_fraction: float = 0.15
    mask_seed: int = 0
    dynamic: bool = True
    random_range: tuple[int, int] = (len(SPECIAL_TOKENS), len(SPECIAL_TOKENS) + 1)

    def blocks(self, stream: torch.Tensor, split: str) -> Split:
        """``stream`` (N,) cut into non-overlapping blocks (N // T, T), masked once for ``split``
        (seed ``mask_seed`` for "test", ``mask_seed + 1`` for "train"); the split keeps the stream."""
        seed = self.mask_seed + (split == "train")
        n = stream.numel() // self.block_size
        ids = stream[: n * self.block_size].view(n, self.block_size)
        inputs, targets = mask_tokens(ids, torch.Generator().manual_seed(seed), fraction=self.mask_fraction,
                                      random_range=self.random_range)
        return Split(inputs, targets, stream=stream)

    def _random_windows(self, stream, n, stop, batch_size, generator, device):
        # Overrides the causal LM's windows of T + 1 tokens: an encoder reads T and predicts inside them.
        if not self.dynamic:
            order = torch.randperm(n, generator=generator)
            split = next(part for part in (self.train, self.test) if part.stream is stream)
            for start in range(0, stop, batch_size):
                index = order[start:start + batch_size]
                yield split.inputs[index].to(device), split.targets[index].to(device)
            return
        span = self.block_size
        offsets = torch.randint(0, stream.numel() - span + 1, (n,), generator=generator)
        steps = torch.arange(span)
        for start in range(0, stop, batch_size):
            windows = stream[offsets[start:start + batch_size, None] + steps]  # (B, T)
            inputs, targets = mask_tokens(windows, generator, fraction=self.mask_fraction,
                                          random_range=self.random_range)
            yield inputs.to(device), targets.to(device)


def masked_text_dataset(text: str, *, name: str = "mlm", block_size: int = 64, mask_fraction: float = 0.15,
                        mask_seed: int = 0, dynamic: bool = True, train_fraction: float = 0.9,
                        info: dict | None = None) -> MaskedDataset:
    """A masked-language-model dataset from a string: characters, split 90/10 by position.

    >>> ds = masked_text_dataset("abcabcabc" * 20, block_size=8)
    >>> ds.vocab_size, tuple(ds.test.inputs.shape), ds.tokenizer.decode(ds.test.stream[:3])
    (5, (2, 8), 'abc')
    """
    if block_size < 1:
        raise UsageError(f"block_size must be at least 1, not {block_size}")
    if not 0 < mask_fraction < 1:
        raise UsageError(f"mask_fraction must be between 0 and 1 (BERT: 0.15), not {mask_fraction}")
    if not 0 < train_fraction < 1:
        raise UsageError(f"train_fraction must be between 0 and 1, not {train_fraction}")
    tok = MaskedCharTokenizer.from_text(text)
    ids = torch.tensor(tok.encode(text), dtype=torch.long)  # (N_tokens,)
    cut = int(train_fraction * ids.numel())
    streams = {"train": ids[:cut], "test": ids[cut:]}
    for part, stream in streams.items():
        if stream.numel() < block_size:
            raise UsageError(f"dataset '{name}': the {part} split has {stream.numel()} tokens, fewer than one "
                             f"block of {block_size}; use a longer text or a smaller block_size")
    empty = Split(torch.zeros(0, block_size, dtype=torch.long), torch.zeros(0, block_size, dtype=torch.long))
    dataset = MaskedDataset(
        name=name, task="masked_language_model", train=empty, test=empty, vocab_size=tok.vocab_size,
        block_size=block_size, tokenizer=tok, mask_fraction=mask_fraction, mask_seed=mask_seed, dynamic=dynamic,
        random_range=(tok.first, tok.vocab_size),
        info={**(info or {}), "tokenizer": tok.kind, "tokens": int(ids.numel()), "train_fraction": train_fraction,
              "mask_fraction": mask_fraction, "mask_seed": mask_seed, "dynamic_masking": dynamic})
    dataset.test = dataset.blocks(streams["test"], "test")
    dataset.train = dataset.blocks(streams["train"], "train")
    return dataset


def masked_text_file_dataset(path: str | Path, *, block_size: int = 64, max_chars: int | None = None,
                             mask_fraction: float = 0.15, mask_seed: int = 0, dynamic: bool = True,
                             train_fraction: float = 0.9) -> MaskedDataset:
    """``mlm:PATH``: a masked-language-model dataset from a UTF-8 text file; see :func:`masked_text_dataset`.

    >>> import tempfile, os
    >>> with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
    ...     _ = f.write("to be or not to be " * 20)
    >>> masked_text_file_dataset(f.name, block_size=16).vocab_size   # 7 characters + <mask>, <pad>
    9
    >>> os.unlink(f.name)
    """
    from .text import read_text_file

    text, info = read_text_file(path, max_chars)
    return masked_text_dataset(text, name=f"mlm:{Path(path).name}", block_size=block_size, mask_fraction=mask_fraction,
                               mask_seed=mask_seed, dynamic=dynamic, train_fraction=train_fraction, info=info)
