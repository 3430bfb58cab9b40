"""``stdlib-text``: the Python standard library's own source, a text corpus on every machine with Python."""
from __future__ import annotations

import sysconfig
from pathlib import Path

from ..errors import UsageError
from .base import Dataset
from .text import text_dataset

DEFAULT_MAX_CHARS = 1_000_000  # about the size of Tiny Shakespeare (1.1 M characters)


def stdlib_corpus(max_chars: int = DEFAULT_MAX_CHARS) -> str:
    """The top-level ``*.py`` files of the standard library, sorted by name, joined, cut at ``max_chars``.

    Only the top level: packages below it may include site-packages on some installs, which
    would make the corpus depend on what else is installed. The text is deterministic for a
    given Python version.

    >>> text = stdlib_corpus(10_000)
    >>> len(text) == 10_000 and "import" in text
    True
    """
    if max_chars < 1:
        raise UsageError(f"max_chars must be positive, not {max_chars}")
    folder = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(folder.glob("*.py"))
    if not files:
        raise UsageError(f"no Python source files in the standard library folder '{folder}'")
    parts, size = [], 0
    for file in files:
        if size >= max_chars:
            break
        source = file.read_text(encoding="utf-8", errors="replace")
        parts.append(source)
        size += len(source) + 1
    return "\n".join(parts)[:max_chars]


def stdlib_text_dataset(*, max_chars: int = DEFAULT_MAX_CHARS, block_size: int = 64, tokenizer=None,
                        train_fraction: float = 0.9) -> Dataset:
    """A language-model dataset over :func:`stdlib_corpus`, character-level unless ``tokenizer`` is given.

    >>> ds = stdlib_text_dataset(max_chars=20_000, block_size=32)
    >>> ds.task, ds.block_size, ds.vocab_size > 50
    ('language_model', 32, True)
    """
    import platform

    text = stdlib_corpus(max_chars)
    return text_dataset(text, name="stdlib-text", block_size=block_size, tokenizer=tokenizer,
                        train_fraction=train_fraction,
                        info={"source": "python stdlib", "python": platform.python_version(), "chars": len(text)})
