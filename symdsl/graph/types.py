"""Symmetry types of tensor axes: the abstract values the static check propagates.

An axis is a row-major tuple of :class:`Atom` factors, each carrying a site and variance or
nothing; a factor may be *squared* (``resid^2``: the coordinates of a site-carrying vector,
squared, not yet summed over the axis; a sum or mean over it is invariant under an isometry). A fused axis (q | k | v) is a :class:`SplitAxis`. A tensor type is a tuple of axes.
Reshaping a fused axis into (parts, ...) yields a :class:`~symdsl.graph.shapes.Stacked` value
whose parts axis selects a part (timm's ``qkv.reshape(B, N, 3, h, k)``) until it is unbound.

>>> show((untyped_axis(2), (Atom(4, "resid"),), SplitAxis(((Atom(4, "qk"),), (Atom(4, "qk", True),)))))
"[_2 resid [qk | qk']]"
>>> show(((Atom(4, "resid", squared=True),),))
'[resid^2]'
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from .shapes import Stacked     # a fused axis cut into parts (shared with inference)


@dataclass(frozen=True)
class Atom:
    """One factor of an axis: its size, and the site (with variance) it carries, if any."""

    size: int
    site: str | None = None
    dual: bool = False
    squared: bool = False      # squared coordinates of the site, awaiting a sum over this axis
    repeated: bool = False     # unbound copies of one value (expand): constant along this factor
    zero: bool = False         # unbound, and every entry is 0 (a zero buffer): every linear map fixes it

    def __str__(self) -> str:
        if not self.site:
            return f"0_{self.size}" if self.zero else f"_{self.size}"
        return f"{self.site}{chr(39) if self.dual else ''}{'^2' if self.squared else ''}"


AxisType = tuple  # tuple[Atom, ...]


@dataclass(frozen=True)
class SplitAxis:
    """A fused axis: consecutive parts, each an axis type."""

    parts: tuple

    @property
    def size(self) -> int:
        return sum(axis_size(p) for p in self.parts)

    def __str__(self) -> str:
        return "[" + " | ".join(show_axis(p) for p in self.parts) + "]"


Axis = Union[tuple, SplitAxis]
TensorType = tuple  # tuple[Axis, ...]


def axis_size(axis: Axis) -> int:
    if isinstance(axis, SplitAxis):
        return axis.size
    n = 1
    for atom in axis:
        n *= atom.size
    return n


def untyped_axis(size: int) -> tuple:
    return (Atom(size),)


def zero_axis(size: int) -> tuple:
    """An axis of a tensor whose every entry is 0 (a zero buffer): ``0 = g 0`` for every linear g,
    so it may stand where any site is expected (:func:`is_zero`).

    >>> show((zero_axis(32),))
    '[0_32]'
    """
    return (Atom(size, zero=True),)


def is_zero(axis: Axis) -> bool:
    """Is the axis all zeros (every factor a zero factor)?

    >>> is_zero(zero_axis(4)), is_zero(untyped_axis(4))
    (True, False)
    """
    return not isinstance(axis, SplitAxis) and bool(axis) and all(
        isinstance(a, Atom) and a.zero for a in axis)


def without_zeros(value):
    """``value`` with every zero factor made a plain unbound one: what an op that does not keep
    zeros zero (``exp``, ``add`` of another tensor) returns.

    >>> show(without_zeros((zero_axis(4), (Atom(4, "resid"),))))
    '[_4 resid]'
    """
    if isinstance(value, Atom):
        return Atom(value.size, value.site, value.dual, value.squared, value.repeated) if value.zero else value
    if isinstance(value, SplitAxis):
        return SplitAxis(tuple(without_zeros(p) for p in value.parts))
    if isinstance(value, Stacked):
        return Stacked(value.axis, tuple(without_zeros(m) for m in value.members))
    if isinstance(value, list):
        return [without_zeros(v) for v in value]
    if isinstance(value, tuple):
        return tuple(without_zeros(v) for v in value)
    return value


def untyped(shape) -> TensorType:
    """The type of a tensor no site touches."""
    return tuple(untyped_axis(int(s)) for s in shape)


def atoms_of(axis: Axis) -> list[Atom]:
    """Every factor of the axis, those of a split nested in it (``(heads [qk | qkp])``) included."""
    if isinstance(axis, SplitAxis):
        return [a for p in axis.parts for a in atoms_of(p)]
    return [a for item in axis for a in (atoms_of(item) if isinstance(item, SplitAxis) else (item,))]


def axis_typed(axis: Axis) -> bool:
    return any(a.site for a in atoms_of(axis))


def is_typed(value) -> bool:
    """Does a value (tensor type, Stacked, tuple of values) carry any site?"""
    if isinstance(value, Stacked):
        return any(is_typed(m) for m in value.members)
    if isinstance(value, tuple) and value and isinstance(value[0], (tuple, SplitAxis)) and _is_tensor_type(value):
        return any(axis_typed(a) for a in value)
    if isinstance(value, (tuple, list)):
        return any(is_typed(v) for v in value)
    return False


def _is_tensor_type(value) -> bool:
    # an axis is a SplitAxis or a tuple of factors, each an Atom or a nested SplitAxis
    return all(isinstance(a, SplitAxis) or (isinstance(a, tuple) and all(isinstance(x, (Atom, SplitAxis)) for x in a))
               for a in value)


def is_tensor_type(value) -> bool:
    return isinstance(value, tuple) and _is_tensor_type(value) and not isinstance(value, Stacked)


def normalize(axis: Axis) -> Axis:
    """Merge neighbouring unbound factors and drop unbound size-1 factors (canonical form)."""
    if isinstance(axis, SplitAxis):
        # a direct sum is associative: [a | [b | c]] is [a | b | c]
        parts = tuple(normalize(p) for p in axis.parts)
        return SplitAxis(tuple(q for p in parts for q in (p.parts if isinstance(p, SplitAxis) else (p,))))
    out: list = []
    for atom in axis:
        if isinstance(atom, SplitAxis):       # a split nested in a composite: (heads [qk | qkp])
            out.append(normalize(atom))
            continue
        if atom.site is None:
            if atom.size == 1:
                continue
            if out and isinstance(out[-1], Atom) and out[-1].site is None:
                # copies of copies are copies; copies next to varying coordinates are not (zeros alike)
                out[-1] = Atom(out[-1].size * atom.size, repeated=out[-1].repeated and atom.repeated,
                               zero=out[-1].zero and atom.zero)
                continue
        out.append(atom)
    return tuple(out) if out else (Atom(1),)


def same_atoms(a: Atom, b: Atom) -> bool:
    """Do two factors carry the same space (the repeated flag aside)?"""
    return (a.size, a.site, a.dual, a.squared) == (b.size, b.site, b.dual, b.squared)


def sites_in(value) -> list[str]:
    """Sites mentioned anywhere in a value, in order."""
    found: list[str] = []

    def visit(v):
        if isinstance(v, Atom):
            if v.site and v.site not in found:
                found.append(v.site)
        elif isinstance(v, SplitAxis):
            for p in v.parts:
                visit(p)
        elif isinstance(v, Stacked):
            for m in v.members:
                visit(m)
        elif isinstance(v, (tuple, list)):
            for x in v:
                visit(x)

    visit(value)
    return found


def show_axis(axis: Axis) -> str:
    if isinstance(axis, SplitAxis):
        return str(axis)
    axis = normalize(axis)
    if len(axis) == 1:
        return str(axis[0])
    return "(" + " ".join(str(a) for a in axis) + ")"


def show(value) -> str:
    """Human-readable form of a value, e.g. ``[_2 _8 resid]``."""
    if isinstance(value, Stacked):
        return "stacked{" + ", ".join(show(m) for m in value.members) + f"}}@{value.axis}"
    if is_tensor_type(value):
        return "[" + " ".join(show_axis(a) for a in value) + "]"
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(show(v) for v in value) + ")"
    return repr(value)
