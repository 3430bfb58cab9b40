"""Axis patterns: how each axis of a tensor is bound to sites.

A pattern has one entry per tensor axis, separated by spaces::

    _                      an axis no site touches (vocab, tokens, channels)
    resid                  the whole axis is site ``resid`` (primal: transforms by g)
    resid'                 ... dual side (transforms by g^-T): the axis contracts with resid
    (heads k)              a composite axis, row-major: index = head * k + j
    (heads qk')            factors may be sites (primal or dual), dimension names, integers or _
    [heads qk | heads qk' | heads ov]
                           a fused axis split into consecutive parts (q | k | v)

Example: HF GPT-2's ``c_attn.weight`` has shape (d, 3d): ``"resid' [heads qk | heads qk' | heads ov]"``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_TOKEN = re.compile(r"\s*(?:(?P<open>[(\[])|(?P<close>[)\]])|(?P<bar>\|)|(?P<int>\d+)|"
                    r"(?P<name>[A-Za-z_][A-Za-z0-9_.]*)(?P<dual>')?)")


class PatternError(ValueError):
    """A pattern string is malformed; ``column`` is 1-based inside the string."""

    def __init__(self, message: str, column: int):
        super().__init__(message)
        self.column = column


@dataclass(frozen=True)
class Factor:
    """One factor of an axis: a site (possibly dual), a dimension name, an integer, or ``_``."""

    name: str | None          # site or dimension name; None for '_' and integer literals
    literal: int | None = None
    dual: bool = False

    def __str__(self) -> str:
        if self.name is None:
            return "_" if self.literal is None else str(self.literal)
        return self.name + ("'" if self.dual else "")


@dataclass(frozen=True)
class AxisPattern:
    """One tensor axis: a list of parts (more than one for a fused split), each a list of factors."""

    parts: tuple[tuple[Factor, ...], ...]

    @property
    def is_split(self) -> bool:
        return len(self.parts) > 1

    def factors(self):
        for part in self.parts:
            yield from part

    def __str__(self) -> str:
        def show(part):
            return str(part[0]) if len(part) == 1 else "(" + " ".join(map(str, part)) + ")"
        if self.is_split:
            return "[" + " | ".join(" ".join(map(str, p)) for p in self.parts) + "]"
        return show(self.parts[0])


def _factor(match: re.Match) -> Factor:
    if match.group("int"):
        return Factor(None, literal=int(match.group("int")))
    name = match.group("name")
    if name == "_":
        if match.group("dual"):
            raise PatternError("'_' cannot be dual", match.start("dual") + 1)
        return Factor(None)
    return Factor(name, dual=bool(match.group("dual")))


def parse_pattern(text: str) -> tuple[AxisPattern, ...]:
    """Parse a pattern string into one :class:`AxisPattern` per axis.

    >>> [str(a) for a in parse_pattern("resid' [heads qk | heads qk' | heads ov]")]
    ["resid'", "[heads qk | heads qk' | heads ov]"]
    """
    tokens: list[re.Match] = []
    pos = 0
    stripped_end = len(text.rstrip())
    while pos < stripped_end:
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            bad = len(text) - len(text[pos:].lstrip())  # skip the blanks before the offending character
            raise PatternError(f"unexpected character {text[bad]!r} in pattern {text!r}", bad + 1)
        atom = match.group("int") or match.group("name")
        if atom and tokens and match.group(0)[:1] not in (" ", "\t") and \
                (tokens[-1].group("int") or tokens[-1].group("name")):
            # '1a' or "qk'x": two factors written without a space between them
            raise PatternError(f"unexpected {match.group(0)!r} right after {tokens[-1].group(0).strip()!r} in "
                               f"pattern {text!r}; separate factors with a space", match.start() + 1)
        if match.group("int") and int(match.group("int")) == 0:
            raise PatternError(f"a factor of size 0 in pattern {text!r}; integer factors must be positive",
                               match.start("int") + 1)
        tokens.append(match)
        pos = match.end()
    axes: list[AxisPattern] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        col = tok.start() + 1 + (len(tok.group(0)) - len(tok.group(0).lstrip()))
        if tok.group("open") == "(":
            part, i = _group(tokens, i + 1, ")", text)
            axes.append(AxisPattern((part,)))
        elif tok.group("open") == "[":
            parts, i = _split(tokens, i + 1, text)
            axes.append(AxisPattern(tuple(parts)))
        elif tok.group("close") or tok.group("bar"):
            raise PatternError(f"unexpected {tok.group(0).strip()!r} in pattern {text!r}", col)
        else:
            axes.append(AxisPattern(((_factor(tok),),)))
            i += 1
    if not axes:
        raise PatternError("empty pattern; use '_' for an axis no site touches", 1)
    return tuple(axes)


def _group(tokens, i, closer, text):
    factors = []
    while i < len(tokens):
        tok = tokens[i]
        if tok.group("close"):
            if tok.group("close") != closer:
                raise PatternError(f"mismatched {tok.group('close')!r} in pattern {text!r}", tok.end())
            if not factors:
                raise PatternError(f"empty group '()' in pattern {text!r}", tok.end())
            return tuple(factors), i + 1
        if tok.group("open") or tok.group("bar"):
            raise PatternError(f"unexpected {tok.group(0).strip()!r} inside '(...)' in pattern {text!r}", tok.end())
        factors.append(_factor(tok))
        i += 1
    raise PatternError(f"missing {closer!r} in pattern {text!r}", len(text))


def _split(tokens, i, text):
    parts, current = [], []
    while i < len(tokens):
        tok = tokens[i]
        if tok.group("bar") or tok.group("close") == "]":
            if not current:
                raise PatternError(f"empty part in '[...]' of pattern {text!r}", tok.end())
            parts.append(tuple(current))
            current = []
            i += 1
            if tok.group("close") == "]":
                if len(parts) < 2:
                    raise PatternError(f"'[...]' needs at least two parts separated by '|' in {text!r}", tok.end())
                return parts, i
        elif tok.group("open") == "(":
            group, i = _group(tokens, i + 1, ")", text)
            current.extend(group)
        elif tok.group("open") or tok.group("close"):
            raise PatternError(f"unexpected {tok.group(0).strip()!r} inside '[...]' in pattern {text!r}", tok.end())
        else:
            current.append(_factor(tok))
            i += 1
    raise PatternError(f"missing ']' in pattern {text!r}", len(text))
