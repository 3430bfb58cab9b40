"""Axis patterns: how each axis of a tensor is bound to sites.

A pattern has one entry per tensor axis, separated by spaces::

    _                      an axis no site touches (vocab, tokens, channels)
    resid                  the whole axis is site ``resid`` (primal: transforms by g)
    resid'                 ... dual side (transforms by g^-T): the axis contracts with resid
    (heads k)              a composite axis, row-major: index = head * k + j
    (heads qk')            factors may be sites (primal or dual), dimension names, integers or _
    [heads qk | heads qk' | heads ov]
                           a fused axis split into consecutive parts (q | k | v)
    (heads [qk | qkp])     a split nested in a composite: every head holds its own parts,
                           index = head * (|qk| + |qkp|) + offset inside the head
    [(kv g [qk | qkp]) | (kv [qk' | qkp']) | kv ov]
                           a fused axis whose parts may themselves be such nested splits

Grammar (``factor`` is a name, a name with ``'``, an integer or ``_``)::

    axis  := factor | "(" comp ")" | "[" alt ("|" alt)+ "]"
    comp  := factor* ["[" inner ("|" inner)+ "]"] factor*      one split at most
    alt   := (factor | "(" comp ")")+                          a "(...[...])" group alone
    inner := (factor | "(" factor+ ")")+

An :class:`AxisPattern` keeps the parts flat: each part lists all its factors, the ones a
nested split shares first (``(heads [qk | qkp])`` has parts ``(heads qk)`` and ``(heads qkp)``),
and ``nest`` says which consecutive parts form one such block and how many leading factors they
share. Factors after a split distribute over its parts (``([a | b] k)`` is ``[a k | b k]``).

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
    """One tensor axis: a list of parts (more than one for a fused split), each a list of factors.

    ``nest`` groups consecutive parts into blocks ``(parts in the block, shared leading
    factors)``; empty when no block shares factors (a plain split, or one composite). A block
    ``(n, s)`` with ``s > 0`` is a split nested in a composite: its parts start with the same
    ``s`` factors, which index the outer positions (row-major outermost).
    """

    parts: tuple[tuple[Factor, ...], ...]
    nest: tuple[tuple[int, int], ...] = ()

    @property
    def is_split(self) -> bool:
        return len(self.parts) > 1

    def factors(self):
        for part in self.parts:
            yield from part

    def blocks(self) -> list[tuple[int, int, int]]:
        """``(first part, parts in the block, shared factors)`` of every block, in order."""
        return blocks_of(len(self.parts), self.nest)

    def __str__(self) -> str:
        def show(factors):
            return " ".join(map(str, factors))

        shown = []
        for first, count, shared in self.blocks():
            if shared:
                rests = " | ".join(show(p[shared:]) for p in self.parts[first:first + count])
                shown.append(f"({show(self.parts[first][:shared])} [{rests}])")
            else:
                part = self.parts[first]
                shown.append(show(part) if self.is_split or len(part) == 1 else f"({show(part)})")
        return shown[0] if len(shown) == 1 else "[" + " | ".join(shown) + "]"


def blocks_of(n_parts: int, nest: tuple[tuple[int, int], ...]) -> list[tuple[int, int, int]]:
    """``(first part, count, shared)`` per block; with no ``nest`` every part is its own block.

    >>> blocks_of(3, ()), blocks_of(5, ((2, 1), (2, 1), (1, 0)))
    ([(0, 1, 0), (1, 1, 0), (2, 1, 0)], [(0, 2, 1), (2, 2, 1), (4, 1, 0)])
    """
    if not nest:
        return [(p, 1, 0) for p in range(n_parts)]
    out, first = [], 0
    for count, shared in nest:
        out.append((first, count, shared))
        first += count
    return out


def _factor(match: re.Match) -> Factor:
    if match.group("int"):
        return Factor(None, literal=int(match.group("int")))
    name = match.group("name")
    if name == "_":
        if match.group("dual"):
            raise PatternError("'_' cannot be dual", match.start("dual") + 1)
        return Factor(None)
    return Factor(name, dual=bool(match.group("dual")))


def _tokenize(text: str) -> list[re.Match]:
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
    return tokens


# A block while parsing: (shared factors, [parts after them]); a plain part is ((), [part]).
_Block = tuple


def parse_pattern(text: str) -> tuple[AxisPattern, ...]:
    """Parse a pattern string into one :class:`AxisPattern` per axis.

    >>> [str(a) for a in parse_pattern("resid' [heads qk | heads qk' | heads ov]")]
    ["resid'", "[heads qk | heads qk' | heads ov]"]
    >>> (axis,) = parse_pattern("(heads [qk | qkp])")
    >>> [" ".join(map(str, p)) for p in axis.parts], axis.nest
    (['heads qk', 'heads qkp'], ((2, 1),))
    """
    tokens = _tokenize(text)
    axes: list[AxisPattern] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        col = tok.start() + 1 + (len(tok.group(0)) - len(tok.group(0).lstrip()))
        if tok.group("open") == "(":
            block, i = _comp(tokens, i + 1, text, allow_split=True)
            axes.append(_axis([block]))
        elif tok.group("open") == "[":
            blocks, i = _split(tokens, i + 1, text, top=True)
            axes.append(_axis(blocks))
        elif tok.group("close") or tok.group("bar"):
            raise PatternError(f"unexpected {tok.group(0).strip()!r} in pattern {text!r}", col)
        else:
            axes.append(AxisPattern(((_factor(tok),),)))
            i += 1
    if not axes:
        raise PatternError("empty pattern; use '_' for an axis no site touches", 1)
    return tuple(axes)


def _axis(blocks: list[_Block]) -> AxisPattern:
    """Flatten blocks into parts; a block without shared factors is one plain part per part."""
    parts: list[tuple[Factor, ...]] = []
    nest: list[tuple[int, int]] = []
    for shared, rests in blocks:
        if shared and len(rests) > 1:
            parts.extend(tuple(shared) + tuple(r) for r in rests)
            nest.append((len(rests), len(shared)))
        else:
            for rest in rests:
                parts.append(tuple(shared) + tuple(rest))
                nest.append((1, 0))
    return AxisPattern(tuple(parts), tuple(nest) if any(s for _, s in nest) else ())


def _comp(tokens, i, text, *, allow_split: bool):
    """A composite up to its ')': ``(shared factors, parts)``, at most one nested split inside."""
    before: list[Factor] = []
    after: list[Factor] = []
    rests = None
    while i < len(tokens):
        tok = tokens[i]
        if tok.group("close"):
            if tok.group("close") != ")":
                raise PatternError(f"mismatched {tok.group('close')!r} in pattern {text!r}", tok.end())
            if not before and rests is None:
                raise PatternError(f"empty group '()' in pattern {text!r}", tok.end())
            if rests is None:
                return ((), [before]), i + 1
            # factors after the split distribute over its parts: ([a | b] k) = [a k | b k]
            return (tuple(before), [list(r) + after for r in rests]), i + 1
        if tok.group("open") == "[" and allow_split:
            if rests is not None:
                raise PatternError(f"a second '[' in one '(...)' in pattern {text!r}; a composite axis holds at "
                                   "most one split", tok.end())
            blocks, i = _split(tokens, i + 1, text, top=False)
            rests = [rest for _, parts in blocks for rest in parts]
            continue
        if tok.group("open") or tok.group("bar"):
            raise PatternError(f"unexpected {tok.group(0).strip()!r} inside '(...)' in pattern {text!r}", tok.end())
        (before if rests is None else after).append(_factor(tok))
        i += 1
    raise PatternError(f"missing ')' in pattern {text!r}", len(text))


def _split(tokens, i, text, *, top: bool):
    """A split up to its ']': a list of blocks. At the top of an axis a part may be one nested
    composite ``(x [a | b])``; inside a composite, parts are plain factors and groups."""
    blocks: list[_Block] = []
    current: list[Factor] = []
    nested: _Block | None = None
    while i < len(tokens):
        tok = tokens[i]
        if tok.group("bar") or tok.group("close") == "]":
            if not current and nested is None:
                raise PatternError(f"empty part in '[...]' of pattern {text!r}", tok.end())
            blocks.append(nested if nested is not None else ((), [current]))
            current, nested = [], None
            i += 1
            if tok.group("close") == "]":
                if len(blocks) < 2:
                    raise PatternError(f"'[...]' needs at least two parts separated by '|' in {text!r}", tok.end())
                return blocks, i
        elif tok.group("open") == "(":
            block, end = _comp(tokens, i + 1, text, allow_split=top)
            shared, rests = block
            if shared or len(rests) > 1:
                # a nested split: it must be the whole part, the factors it shares first
                if current or nested is not None or (end < len(tokens) and not (
                        tokens[end].group("bar") or tokens[end].group("close") == "]")):
                    raise PatternError(f"a '(... [...])' group must be a whole part of '[...]' in pattern {text!r}",
                                       tokens[i].end())
                nested = (shared, rests) if shared else None
                if nested is None:      # ([a | b] k): no shared factor, plain parts
                    blocks.extend(((), [r]) for r in rests[:-1])
                    current = list(rests[-1])
            else:
                if nested is not None:
                    raise PatternError(f"a '(... [...])' group must be a whole part of '[...]' in pattern {text!r}",
                                       tokens[i].end())
                current.extend(rests[0])
            i = end
        elif tok.group("open") or tok.group("close"):
            raise PatternError(f"unexpected {tok.group(0).strip()!r} inside '[...]' in pattern {text!r}", tok.end())
        else:
            if nested is not None:
                raise PatternError(f"a '(... [...])' group must be a whole part of '[...]' in pattern {text!r}",
                                   tok.end())
            current.append(_factor(tok))
            i += 1
    raise PatternError(f"missing ']' in pattern {text!r}", len(text))
