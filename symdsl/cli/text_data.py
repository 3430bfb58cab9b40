"""The command-line options that shape a text dataset: ``--tokenizer DIR`` and ``--max-chars N``.

Shared by ``train`` and ``align``/``merge``/``barrier`` so that a pair is evaluated on the very
corpus (tokenizer, truncation) it was trained on.
"""
from __future__ import annotations

from ..errors import UsageError


def add_text_options(parser) -> None:
    parser.add_argument("--tokenizer", metavar="DIR", help="with --data text:PATH: a GPT-2 BPE tokenizer folder "
                        "(vocab.json + merges.txt) instead of characters; use the one the models were trained with")
    parser.add_argument("--max-chars", type=int, default=None, metavar="N",
                        help="with --data text:PATH, mlm:PATH or stdlib-text: keep only the first N characters "
                             "(train and test split 90/10 within them); use the value the models were trained with")


def text_options(args, data: str | None) -> dict:
    """``load_dataset`` keyword arguments for ``--tokenizer`` / ``--max-chars``, checked against ``data``.

    >>> from types import SimpleNamespace
    >>> text_options(SimpleNamespace(tokenizer=None, max_chars=1000), "text:a.txt")
    {'max_chars': 1000}
    """
    given = f"not '{data}'" if data else "and no --data was given"
    options = {}
    if getattr(args, "tokenizer", None):
        if not (data or "").startswith("text:"):
            raise UsageError(f"--tokenizer applies to --data text:PATH, {given}")
        options["tokenizer"] = args.tokenizer
    if getattr(args, "max_chars", None) is not None:
        if not ((data or "").startswith(("text:", "mlm:")) or data == "stdlib-text"):
            raise UsageError(f"--max-chars applies to --data text:PATH, mlm:PATH or stdlib-text, {given}")
        if args.max_chars < 2:
            raise UsageError(f"--max-chars must be at least 2, not {args.max_chars}")
        options["max_chars"] = args.max_chars
    return options
