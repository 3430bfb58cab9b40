"""Tokenizers for text datasets: characters (the default) and GPT-2 byte-pair encoding."""
from __future__ import annotations

from pathlib import Path

from ..errors import UsageError


class CharTokenizer:
    """One token per character; the vocabulary is the sorted set of characters of a text.

    >>> tok = CharTokenizer.from_text("hello")
    >>> tok.chars, tok.encode("hole"), tok.decode([2, 1])
    ('ehlo', [1, 3, 2, 0], 'lh')
    """

    kind = "char"

    def __init__(self, chars: str) -> None:
        if len(set(chars)) != len(chars):
            raise UsageError("a character vocabulary must not repeat characters")
        self.chars = chars
        self._index = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        """The tokenizer whose vocabulary is every character of ``text``, sorted."""
        return cls("".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; a character outside the vocabulary is an error."""
        try:
            return [self._index[c] for c in text]
        except KeyError as exc:
            raise UsageError(f"character {exc.args[0]!r} is not in this tokenizer's vocabulary") from None

    def decode(self, ids) -> str:
        """The text of token ids (a list or a 1-D tensor)."""
        return "".join(self.chars[int(i)] for i in ids)


class BPETokenizer:
    """GPT-2 byte-pair encoding, read from a folder holding vocab.json and merges.txt.

    >>> from pathlib import Path
    >>> folder = Path("../shared/data/gpt2_tokenizer")
    >>> tok = BPETokenizer(folder) if folder.is_dir() else None
    >>> tok is None or tok.decode(tok.encode("To be, or not to be")) == "To be, or not to be"
    True
    """

    kind = "gpt2-bpe"

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        if not folder.is_dir():
            raise UsageError(f"tokenizer folder '{folder}' does not exist; give a folder with vocab.json "
                             "and merges.txt (a GPT-2 tokenizer saved with save_pretrained)")
        try:
            from transformers import GPT2TokenizerFast
        except ImportError:
            raise UsageError("BPE tokenization needs transformers: pip install 'symdsl[hf]'") from None
        from ..models.build import quiet_transformers

        with quiet_transformers():
            self._tokenizer = GPT2TokenizerFast.from_pretrained(str(folder))
        self.folder = folder

    @property
    def vocab_size(self) -> int:
        return len(self._tokenizer)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens added, no length limit)."""
        from ..models.build import quiet_transformers

        # quiet: the tokenizer warns when a text is longer than GPT-2's 1024 positions.
        with quiet_transformers():
            return self._tokenizer.encode(text)

    def decode(self, ids) -> str:
        """The text of token ids (a list or a 1-D tensor)."""
        return self._tokenizer.decode([int(i) for i in ids])
