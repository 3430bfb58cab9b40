"""Axis patterns of a draft: what each parameter axis is made of, and how to write it.

An axis is described as parts (a fused axis has several) of row-major factors; a factor is a
component (class root) with the parity of this axis relative to it, or an unbound block of a
known size. A fused axis nested inside a composite one, e.g. ``(heads [q | k | v])``, cannot
be written in the spec language: its components are reported as *inexpressible* and the
draft leaves them unbound.
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
    nested: int | None = None      # for an unbound block: the fused class nested here, if any


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
        if in_product:
            inexpressible.update(leaves(vars, root))
            return [[Factor(None, 0, vars.size(root), nested=root)]]
        return [part for child, bit in s.children for part in _describe(vars, child, bit ^ p, False, inexpressible)]
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

    if all(name_of(f.root) is None for part in parts for f in part if f.root is not None):
        return "_"
    if len(parts) == 1:
        factors = factor_list(parts[0], whole=len(parts[0]) == 1)
        return factors[0] if len(factors) == 1 else "(" + " ".join(factors) + ")"
    return "[" + " | ".join(" ".join(factor_list(p, whole=False)) for p in parts) + "]"


def tensor_text(axes: list[list[list[Factor]]], name_of, dual_of) -> str:
    """The whole pattern of a tensor: one entry per axis, space separated.

    >>> axes = [[[Factor(None, 0, 50)]], [[Factor(3, 0, 8)]]]          # an embedding (vocab, d)
    >>> tensor_text(axes, {3: "resid"}.get, lambda f, whole, axis: False)
    '_ resid'
    """
    return " ".join(axis_text(parts, name_of, lambda f, whole, i=i: dual_of(f, whole, i))
                    for i, parts in enumerate(axes))
