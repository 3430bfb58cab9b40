"""Errors that users see: every one names where the problem is and how to fix it."""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Iterable, Sequence


def suggest(word: str, choices: Iterable[str]) -> str:
    """Return ``"; did you mean 'x'?"`` for the closest choice, or ``""``.

    >>> suggest("orthogonl", ["orthogonal", "invertible"])
    "; did you mean 'orthogonal'?"
    """
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


@dataclass
class Problem:
    """One problem in a spec: where (file, line, column, key path) and what."""

    message: str
    path: Sequence[str | int] = ()
    file: str = "<spec>"
    line: int | None = None
    column: int | None = None
    hint: str = ""

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}:{self.column or 1}"
        key = ".".join(str(p) for p in self.path)
        text = f"{where}: {key}: {self.message}" if key else f"{where}: {self.message}"
        return text + (f"\n    hint: {self.hint}" if self.hint else "")


class SymdslError(Exception):
    """Base class of every error symdsl raises on purpose."""


@dataclass
class SpecError(SymdslError):
    """A spec is invalid; carries every problem found, each with its location."""

    problems: list[Problem] = field(default_factory=list)

    def __str__(self) -> str:
        n = len(self.problems)
        head = f"{n} problem{'s' if n != 1 else ''} in spec"
        return head + ":\n" + "\n".join(f"  {p}" for p in self.problems)


class BindError(SymdslError):
    """A spec does not fit a concrete model (missing tensor, wrong shape, ...)."""


class UsageError(SymdslError):
    """The user asked for something that cannot be done (bad argument, bad file)."""


class UnknownNameError(UsageError, KeyError):
    """A name that no registry holds (group kind, matcher, dataset ...); the message suggests the closest.

    Also a ``KeyError``, so ``name in registry``-style code can catch it as a missing key.
    """

    def __str__(self) -> str:           # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
