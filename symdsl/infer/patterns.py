"""Axis patterns of a draft: what each parameter axis is made of, and how to write it.

An axis is described as parts (a fused axis has several) of row-major factors; a factor is a
component (class root) with the parity of this axis relative to it, an unbound block of a known
size, or a fused axis nested inside the composite one (``(heads [q | k | v])``: GPT-NeoX's
per-head q/k/v, a head's rotary and pass-through parts), written with its own parts.
"""
from __future__ import annotations

from dataclasses import dataclass

from .variables import AxisVars


@dataclass(frozen=True)
class Factor:
    """One factor of an axis: component ``root`` (None: unbound) of ``size``, ``parity`` 1 = dual."""

    root: int | None
    parity: int
    size: int
    nested: int | None = None      # a fused class nested here (root None): its parts are ``parts``
    parts: tuple = ()              # the nested fused axis's parts, each a tuple of Factors


def walk_factors(part, before: int | None = None):
    """``(factor, root of the factor just before it)`` for every component of a part, nested
    fused axes included: the first factor of each nested part follows what precedes the split.

    >>> inner = (Factor(3, 0, 4),), (Factor(4, 0, 2),)
    >>> [(f.root, prev) for f, prev in walk_factors([Factor(1, 0, 2), Factor(None, 0, 6, nested=9, parts=inner)])]
    [(1, None), (3, 1), (4, 1)]
    """
    prev = before
    for f in part:
        if f.parts:
            for sub in f.parts:
                yield from walk_factors(sub, prev)
            prev = None
            continue
        if f.root is not None:
            yield f, prev
        prev = f.root


def describe(vars: AxisVars, var: int, inexpressible: set[int]) -> list[list[Factor]]:
    """Parts of factors for axis variable ``var`` (leaves under a nested sum go to ``inexpressible``).

    >>> v = AxisVars()
    >>> d = v.new(6)
    >>> h, k = v.expand(d, "prod", [2, 3])
    >>> [[(f.size, f.parity) for f in part] for part in describe(v, d, set())]
    [[(2, 0), (3, 0)]]
    """
    return _describe(vars, var, 0, False, inexpressible)


def leaves(vars: AxisVars, var: int) -> list[int]:
    """The leaf class roots below ``var``'s structure (itself when it has none).

    >>> v = AxisVars()
    >>> d = v.new(6)
    >>> h, k = v.expand(d, "prod", [2, 3])
    >>> leaves(v, d) == [h, k], leaves(v, h) == [h]
    (True, True)
    """
    s = vars.struct.get(vars.root(var))
    if s is None:
        return [vars.root(var)]
    return [leaf for child, _ in s.children for leaf in leaves(vars, child)]


def _describe(vars, var, parity, in_product, inexpressible):
    root, p = vars.find(var)
    p ^= parity
    s = vars.struct.get(root)
    if s is None:
        return [[Factor(root, p, vars.size(root))]]
    if s.kind == "sum":
        parts = [part for child, bit in s.children for part in _describe(vars, child, bit ^ p, False, inexpressible)]
        if in_product:        # (heads [q | k | v]): one nested item of the composite axis
            return [[Factor(None, 0, vars.size(root), nested=root, parts=tuple(tuple(q) for q in parts))]]
        return parts
    factors = []
    for child, bit in s.children:
        factors.extend(_describe(vars, child, bit ^ p, True, inexpressible)[0])
    return [factors]


def axis_text(parts: list[list[Factor]], name_of, dual_of) -> str:
    """One pattern entry: ``_``, ``site``, ``site'``, ``(a b')`` or ``[a b | 32 | c]``.

    ``name_of(root)`` is a site name or None (unbound); ``dual_of(factor, whole)`` says whether
    a bound factor is written dual (``whole``: it is the entire axis).

    >>> f = [[Factor(1, 0, 4), Factor(2, 1, 8)]]
    >>> axis_text(f, {1: "heads", 2: "qk"}.get, lambda fa, whole: bool(fa.parity))
    "(heads qk')"
    """
    def factor_list(part, whole):
        out, pending = [], 1
        for f in part:
            if f.parts and all(name_of(g.root) is None for q in f.parts for g, _ in walk_factors(q)):
                pending *= f.size            # a nested split with nothing bound is one unbound block
                continue
            if f.parts:
                if pending > 1:
                    out.append(str(pending))
                    pending = 1
                out.append("[" + " | ".join(" ".join(factor_list(list(q), whole=False)) for q in f.parts) + "]")
                continue
            name = name_of(f.root) if f.root is not None else None
            if name is None:
                pending *= f.size
                continue
            if pending > 1:
                out.append(str(pending))
                pending = 1
            out.append(name + ("'" if dual_of(f, whole) else ""))
        if pending > 1 or not out:
            out.append(str(pending))
        return out

    if all(name_of(f.root) is None for part in parts for f, _ in walk_factors(part)):
        return "_"
    if len(parts) == 1:
        factors = factor_list(parts[0], whole=len(parts[0]) == 1)
        return factors[0] if len(factors) == 1 else "(" + " ".join(factors) + ")"
    def part_text(part) -> str:
        factors = factor_list(part, whole=False)
        text = " ".join(factors)
        # a split nested in a part is written inside a composite: [(kv qh [qk | qkp]) | ...]
        return f"({text})" if len(factors) > 1 and any(f.startswith("[") for f in factors) else text

    return "[" + " | ".join(part_text(p) for p in parts) + "]"


def tensor_text(axes: list[list[list[Factor]]], name_of, dual_of) -> str:
    """The whole pattern of a tensor: one entry per axis, space separated.

    >>> axes = [[[Factor(None, 0, 50)]], [[Factor(3, 0, 8)]]]          # an embedding (vocab, d)
    >>> tensor_text(axes, {3: "resid"}.get, lambda f, whole, axis: False)
    '_ resid'
    """
    return " ".join(axis_text(parts, name_of, lambda f, whole, i=i: dual_of(f, whole, i))
                    for i, parts in enumerate(axes))
