"""Text datasets for language models: a token stream split 90/10 by position, cut into blocks."""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UsageError
from .base import Dataset, Split
from .tokenizers import BPETokenizer, CharTokenizer


def text_dataset(text: str, *, name: str = "text", block_size: int = 64, tokenizer: str | Path | None = None,
                 train_fraction: float = 0.9, info: dict | None = None) -> Dataset:
    """A language-model dataset from a string.

    Tokens are characters (vocabulary: the text's characters, sorted) or, with ``tokenizer`` a
    folder, GPT-2 BPE. The first ``train_fraction`` of the tokens is train, the rest test. Each
    split is cut into non-overlapping sequences of ``block_size`` input tokens, each with its
    ``block_size`` next tokens as targets; shuffled train batches draw random windows instead.

    >>> ds = text_dataset("abcabcabc" * 20, block_size=8)
    >>> ds.vocab_size, len(ds.train.stream), tuple(ds.test.inputs.shape)
    (3, 162, (2, 8))
    """
    if block_size < 1:
        raise UsageError(f"block_size must be at least 1, not {block_size}")
    if not 0 < train_fraction < 1:
        raise UsageError(f"train_fraction must be between 0 and 1, not {train_fraction}")
    tok = CharTokenizer.from_text(text) if tokenizer is None else BPETokenizer(tokenizer)
    ids = torch.tensor(tok.encode(text), dtype=torch.long)  # (N_tokens,)
    cut = int(train_fraction * ids.numel())
    train, test = ids[:cut], ids[cut:]
    for part, stream in (("train", train), ("test", test)):
        if stream.numel() < block_size + 1:
            raise UsageError(f"dataset '{name}': the {part} split has {stream.numel()} tokens, fewer than one "
                             f"block of {block_size} + 1; use a longer text or a smaller block_size")
    return Dataset(
        name=name, task="language_model", train=_blocks(train, block_size), test=_blocks(test, block_size),
        vocab_size=tok.vocab_size, block_size=block_size, tokenizer=tok,
        info={**(info or {}), "tokenizer": tok.kind, "tokens": int(ids.numel()), "train_fraction": train_fraction},
    )


def text_file_dataset(path: str | Path, *, block_size: int = 64, tokenizer: str | Path | None = None,
                      max_chars: int | None = None, train_fraction: float = 0.9) -> Dataset:
    """A language-model dataset from a UTF-8 text file (``text:PATH``); see :func:`text_dataset`.

    ``max_chars`` keeps only the first characters of the file (quick experiments).

    >>> import tempfile, os
    >>> with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
    ...     _ = f.write("to be or not to be " * 20)
    >>> text_file_dataset(f.name, block_size=16).vocab_size
    7
    >>> os.unlink(f.name)
    """
    text, info = read_text_file(path, max_chars)
    return text_dataset(text, name=f"text:{Path(path).name}", block_size=block_size, tokenizer=tokenizer,
                        train_fraction=train_fraction, info=info)


def read_text_file(path: str | Path, max_chars: int | None = None) -> tuple[str, dict]:
    """The UTF-8 text of ``path`` (its first ``max_chars`` characters) and its provenance record.

    Shared by ``text:PATH`` and ``mlm:PATH``, so both report a bad file the same way.

    >>> read_text_file("no/such/file.txt")
    Traceback (most recent call last):
    ...
    symdsl.errors.UsageError: text file 'no/such/file.txt' does not exist
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"text file '{path}' does not exist")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:    # say where, as for a spec: line and column of the first bad byte
        before = data[:exc.start]
        line, column = before.count(b"\n") + 1, exc.start - (before.rfind(b"\n") + 1) + 1
        raise UsageError(f"{path}:{line}:{column}: not UTF-8 text (byte 0x{data[exc.start]:02x}); convert the file to "
                         "UTF-8, e.g. iconv -f latin1 -t utf-8") from None
    if max_chars is not None:
        text = text[:max_chars]
    return text, {"source": str(path), "chars": len(text)}


def _blocks(stream: torch.Tensor, block_size: int) -> Split:
    # (M,) stream -> n = (M - 1) // T sequences: inputs (n, T), targets (n, T) shifted by one,
    # so every token after the first is predicted exactly once (up to the ragged tail).
    n = (stream.numel() - 1) // block_size
    inputs = stream[: n * block_size].view(n, block_size)
    targets = stream[1: n * block_size + 1].view(n, block_size)
    return Split(inputs, targets, stream=stream)
