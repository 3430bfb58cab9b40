"""Reshapes during inference: how view/reshape/flatten regroup axis variables.

An input tensor's axes are flattened into their row-major *atoms* (the leaves of product
variables; fused variables stay whole), then the atoms are grouped into the output sizes:

* an output axis made of one atom is that variable;
* an axis made of several atoms is a new product variable, e.g. ``(b, t, h, k) -> (b, t, d)``
  gives ``d = (h k)``;
* an atom that must be cut is expanded into a product, e.g. ``(b, t, d) -> (b, t, h, k)`` makes
  ``d`` the product ``(h k)`` for every tensor that shares it;
* an atom cut at an output axis that the graph later unbinds or selects from (timm's
  ``qkv.reshape(B, N, 3, h, k)`` then ``unbind(0)``) is a *fused* axis: it is expanded into a sum
  of equal parts and the result is a :class:`Stacked` value, one member per part.
"""
from __future__ import annotations

from dataclasses import dataclass

from .variables import AxisVars

_PASS_THROUGH = frozenset({"identity", "contiguous", "clone", "alias", "to", "detach"})


class ReshapeError(Exception):
    """The reshape cannot be followed on these variables (the caller goes conservative)."""


@dataclass
class Stacked:
    """A tensor whose axis ``axis`` indexes the parts of a fused axis; ``members`` are the
    per-part tensor values (tuples of variables, the parts axis included)."""

    axis: int
    members: list[tuple]


def regroup(vars: AxisVars, axes: tuple, shape: list[int], parts_axes: frozenset = frozenset()):
    """The output value of reshaping a tensor with axis variables ``axes`` to ``shape``.

    Returns a tuple of variables, or a :class:`Stacked` value when a fused axis is cut at one
    of ``parts_axes``. Raises :class:`ReshapeError` when a cut is impossible.

    >>> v = AxisVars()
    >>> b, d = v.new(2), v.new(6)
    >>> out = regroup(v, (b, d), [2, 2, 3])          # (b, d) -> (b, h, k)
    >>> out[0] == b, v.structure(d)[0], [v.size(x) for x in out]
    (True, 'prod', [2, 2, 3])
    """
    atoms = [a for var in axes for a in vars.factors(var) if vars.size(a) != 1]
    out: list[int] = []
    pos = 0
    for index, size in enumerate(shape):
        size = int(size)
        if size == 1:
            out.append(vars.new(1))
            continue
        group: list[int] = []
        prod = 1
        while prod < size:
            if pos >= len(atoms):
                raise ReshapeError(f"reshape to {list(shape)} does not match the input's factors")
            atom = atoms[pos]
            s = vars.size(atom)
            if size % (prod * s) == 0:
                group.append(atom)
                prod *= s
                pos += 1
                continue
            need = size // prod
            if need <= 1 or s % need:
                raise ReshapeError(f"reshape to {list(shape)} cuts an axis of size {s} unevenly")
            if index in parts_axes and prod == 1:
                parts = vars.expand(atom, "sum", [s // need] * need)
                if parts is None:
                    raise ReshapeError("a fused axis is cut in a way that does not match its parts")
                rest = atoms[pos + 1:]
                members = []
                for part in parts:
                    member_rest = regroup(vars, (part, *rest), [int(x) for x in shape[index + 1:]])
                    members.append(tuple(out) + (vars.new(need),) + tuple(member_rest))
                return Stacked(index, members)
            pieces = vars.expand(atom, "prod", [need, s // need])
            if pieces is None:
                raise ReshapeError(f"reshape to {list(shape)} splits an axis that is already split differently")
            atoms[pos:pos + 1] = pieces
        out.append(group[0] if len(group) == 1 else vars.new_product(group))
    if pos != len(atoms):
        raise ReshapeError(f"reshape to {list(shape)} leaves factors unplaced")
    return tuple(out)


def parts_axes(graph, node) -> frozenset:
    """Axes of ``node``'s output that later ops unbind or select from, possibly after
    permute/transpose: where a reshape cuts a fused (q | k | v) axis into its parts."""
    shape = node.shape
    if not isinstance(shape, tuple) or not shape or isinstance(shape[0], tuple):
        return frozenset()
    return frozenset(axis for axis in range(len(shape)) if shape[axis] > 1
                     and _consumed_as_parts(graph, node.name, axis, len(shape), 0))


def _consumed_as_parts(graph, name: str, axis: int, ndim: int, depth: int) -> bool:
    users = graph.users(name)
    if not users or depth > 8:
        return False
    for user in users:
        op, args = user.op, user.args
        if op in _PASS_THROUGH:
            ok = _consumed_as_parts(graph, user.name, axis, ndim, depth + 1)
        elif op == "permute" and isinstance(args[1], (list, tuple)):
            dims = [d % ndim for d in args[1]]
            ok = _consumed_as_parts(graph, user.name, dims.index(axis), ndim, depth + 1)
        elif op == "transpose":
            d0, d1 = args[1] % ndim, args[2] % ndim
            moved = d1 if axis == d0 else d0 if axis == d1 else axis
            ok = _consumed_as_parts(graph, user.name, moved, ndim, depth + 1)
        elif op in ("unbind", "select"):
            dim = args[1] if len(args) > 1 else 0
            ok = isinstance(dim, int) and dim % ndim == axis
        else:
            ok = False
        if not ok:
            return False
    return True
