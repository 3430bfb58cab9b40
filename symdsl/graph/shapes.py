"""The axis/shape algebra both analyses share: fused-parts values, axis reordering, reshapes.

A tensor's abstract value is a tuple with one entry per axis; what an entry is belongs to the
analysis (a site type for the checker, a union-find variable for inference). The code here
never looks inside an axis: it asks the op call (:class:`symdsl.graph.walker.OpCall`) for the
few things a reshape needs (an axis's row-major factors, cutting a factor, joining factors).

>>> reorder((10, 11, 12), [2, 0, 1])
(12, 10, 11)
>>> s = Stacked(0, ((1, 2), (1, 3)))          # axis 0 selects a part: member 0 or member 1
>>> reorder(s, [1, 0]), ndim(s)
(Stacked(axis=1, members=((2, 1), (3, 1))), 2)
"""
from __future__ import annotations

from dataclasses import dataclass


class Unsupported(Exception):
    """The rule cannot follow this case (or there is no rule): the analyses fail closed."""

    def __init__(self, message: str, *, missing: bool = False):
        super().__init__(message)
        self.message, self.missing = message, missing

# ops whose output is their first input, unchanged (dtype casts, copies, export's aliases)
PASS_THROUGH = ("identity", "contiguous", "clone", "alias", "to", "detach", "lift_fresh_copy", "type_as")
# ops whose output is zero wherever their input is (they move, cut, join or negate entries): a
# zero buffer stays a zero tensor through them and becomes an ordinary one through any other op
ZERO_KEEPING = PASS_THROUGH + ("view", "reshape", "_unsafe_view", "flatten", "transpose", "permute", "t",
                               "unsqueeze", "squeeze", "expand", "neg", "cat", "concat", "concatenate", "stack",
                               "slice", "select", "split", "chunk", "unbind", "getitem")


@dataclass(frozen=True)
class Stacked:
    """A tensor whose axis ``axis`` indexes the parts of a fused axis (timm's
    ``qkv.reshape(B, N, 3, h, k)``); ``members`` are the per-part tensor values, parts axis
    included, until ``unbind``/``select`` takes them apart."""

    axis: int
    members: tuple


def ndim(value) -> int:
    """Number of axes of a tensor value or a :class:`Stacked` one."""
    return len(value.members[0]) if isinstance(value, Stacked) else len(value)


def reorder(value, order):
    """Axes of ``value`` in ``order`` (permute/transpose), for tensors and :class:`Stacked`."""
    if isinstance(value, Stacked):
        return Stacked(order.index(value.axis), tuple(tuple(m[i] for i in order) for m in value.members))
    return tuple(value[i] for i in order)


def regroup(call, axes: tuple, shape, parts_axes: frozenset = frozenset()):
    """The value of a tensor with axes ``axes`` viewed as ``shape`` (view/reshape/flatten).

    The input's axes are flattened into row-major factors (``call.factors``), then grouped
    into the output sizes: a group of one factor is that factor's axis, several are joined
    (``call.join``), e.g. ``(b, t, h, k) -> (b, t, d)`` makes ``d = (h k)``. A factor that must
    be cut is cut by ``call.cut`` (``(b, t, d) -> (b, t, h, k)``); a fused factor cut at its
    parts count, at an axis in ``parts_axes`` (one the graph later unbinds or selects from),
    becomes a :class:`Stacked` value, one member per part (``call.fused_parts``). Raises
    :class:`~symdsl.graph.walker.Unsupported` when the factors do not fit ``shape``.

    With the checker's algebra (axes are site types), a head split and a fused q | k axis:

    >>> from types import SimpleNamespace
    >>> from symdsl.graph.typecheck import CheckCall
    >>> from symdsl.graph.types import Atom, SplitAxis, show
    >>> call = CheckCall(SimpleNamespace(sites={}), None)
    >>> d = (Atom(2, "heads"), Atom(4, "qk"))                            # one axis (heads qk)
    >>> show(regroup(call, ((Atom(5),), d), [5, 2, 4]))                # (t, d) -> (t, h, k)
    '[_5 heads qk]'
    >>> qk = SplitAxis(((Atom(8, "q"),), (Atom(8, "k"),)))
    >>> show(regroup(call, ((Atom(5),), qk), [5, 2, 8]))               # (t, [q | k]) -> (t, 2, 8)
    'stacked{[_5 _2 q], [_5 _2 k]}@1'
    """
    return _group(call, [f for axis in axes for f in call.factors(axis)], [int(s) for s in shape], parts_axes)


def _group(call, items: list, shape: list, parts_axes: frozenset):
    out: list = []
    pos = 0
    for index, size in enumerate(shape):
        if size == 1:                        # a size-1 axis keeps a size-1 factor if one comes next
            if pos < len(items) and call.item_size(items[pos]) == 1:
                out.append(call.join([items[pos]]))
                pos += 1
            else:
                out.append(call.new_axis(1))
            continue
        group, prod = [], 1
        while prod < size:
            if pos >= len(items):
                raise Unsupported(f"reshape to {tuple(shape)} does not match the input's factors")
            item = items[pos]
            s = call.item_size(item)
            if size % (prod * s) == 0:
                group.append(item)
                prod *= s
                pos += 1
                continue
            need = size // prod
            if need <= 1 or s % need:
                raise Unsupported(f"reshape to {tuple(shape)} cuts an axis of size {s} unevenly")
            parts = call.fused_parts(item, need, index in parts_axes) if prod == 1 else None
            if parts is not None:
                rest = items[pos + 1:]
                members = []
                for part in parts:
                    # each part continues with the factors after the fused axis: (3, h, k) -> part as (h, k)
                    tail = _group(call, list(call.factors(part)) + rest, shape[index + 1:], frozenset())
                    members.append(tuple(out) + (call.new_axis(need),) + tail)
                return Stacked(index, tuple(members))
            items[pos:pos + 1] = call.cut(item, need, tuple(shape))
        out.append(call.join(group))
    if pos != len(items):
        raise Unsupported(f"reshape to {tuple(shape)} leaves factors unplaced")
    return tuple(out)


def parts_axes(graph, node) -> frozenset:
    """Axes of ``node``'s output that later ops unbind or select from, possibly after
    permute/transpose: where a reshape cuts a fused (q | k | v) axis into its parts."""
    shape = node.shape
    if not isinstance(shape, tuple) or not shape or isinstance(shape[0], tuple):
        return frozenset()
    return frozenset(axis for axis in range(len(shape)) if shape[axis] > 1
                     and _consumed_as_parts(graph, node.name, axis, len(shape), 0))


def _consumed_as_parts(graph, name: str, axis: int, ndims: int, depth: int) -> bool:
    users = graph.users(name)
    if not users or depth > 8:
        return False
    for user in users:
        op, args = user.op, user.args
        if op in PASS_THROUGH[:6]:
            ok = _consumed_as_parts(graph, user.name, axis, ndims, depth + 1)
        elif op == "permute" and isinstance(args[1], (list, tuple)):
            dims = [d % ndims for d in args[1]]
            ok = _consumed_as_parts(graph, user.name, dims.index(axis), ndims, depth + 1)
        elif op == "transpose":
            d0, d1 = args[1] % ndims, args[2] % ndims
            moved = d1 if axis == d0 else d0 if axis == d1 else axis
            ok = _consumed_as_parts(graph, user.name, moved, ndims, depth + 1)
        elif op in ("unbind", "select"):
            dim = args[1] if len(args) > 1 else 0
            ok = isinstance(dim, int) and dim % ndims == axis
        else:
            ok = False
        if not ok:
            return False
    return True
