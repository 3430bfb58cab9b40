"""Inference's side of the op-rule interface: statements about axes become unions and flags.

Each axis is a variable of :class:`~symdsl.infer.variables.AxisVars`. :class:`InferCall`
implements :class:`~symdsl.graph.walker.OpCall`'s interface for the shared rules of
:mod:`symdsl.graph.ops`: ``same`` unites two variables, ``contract`` unites them as each
other's dual, ``nonlinear``/``shift``/``summed``/``fixed`` record the flags that later limit
the group (:mod:`symdsl.infer.groups`), ``normalize`` records the norm for folding, ``gain``
records a per-feature parameter gain for folding (a hand-written norm's ``weight * x``),
``square`` gives a fresh variable for the squares (:attr:`~symdsl.infer.walk.Walk.squares`):
summed over, it flags its source ``isometric`` (a norm: rotations and permutations keep it);
any other statement about it flags the source ``nonlinear`` (like the checker, which accepts
squares only under a sum over their axis), and unites it with its source. And
``reads``/``writes``/``hint`` record evidence for orientation and names. Nothing here fails:
a case a rule cannot follow raises :class:`~symdsl.graph.walker.Unsupported` and the walk
goes conservative (:mod:`symdsl.infer.walk`).
"""
from __future__ import annotations

from ..graph.walker import OpCall, Unsupported


class InferCall(OpCall):
    """One node seen by inference: ``walker.result`` is the :class:`~symdsl.infer.walk.Walk`."""

    @property
    def vars(self):
        return self.walker.result.vars

    @property
    def where(self) -> str:
        return f"{self.node.op} in {self.node.module}" if self.node.module else f"{self.node.op} ({self.node.name})"

    def _why(self, what: str | None) -> str:
        return self.where if what is None else f"{what} ({self.where})"

    def param(self, index: int) -> str | None:
        # persistent parameters only: non-persistent buffers are constants of the model
        name = super().param(index)
        return name if name in self.walker.result.param_axes else None

    def fresh(self, shape, reason: str | None = None):
        """New variables for an output of ``shape`` (flagged fixed with ``reason``)."""
        if shape is None:
            return None
        if shape and isinstance(shape[0], tuple):
            return [self.fresh(s, reason) for s in shape]
        return tuple(self.vars.new(int(s), "fixed" if reason else None, reason or "") for s in shape)

    # -- axes ------------------------------------------------------------------------------
    def size(self, axis) -> int:
        return self.vars.size(axis)

    def is_unit(self, axis) -> bool:
        return self.vars.size(axis) == 1

    def new_axis(self, size, fixed=None, *, broadcast=None):
        if broadcast:
            return self.vars.new(size, "shift", self._why(broadcast))
        return self.vars.new(size, "fixed" if fixed else None, self._why(fixed) if fixed else "")

    def settle(self, *axes) -> None:
        """Squares (see :meth:`square`) used by anything but a sum over their axis: the source
        meets a coordinatewise nonlinearity, and the squares are the source's space."""
        squares = self.walker.result.squares
        for axis in axes:
            if isinstance(axis, int) and axis in squares:
                source = squares[axis]
                self.vars.flag(source, "nonlinear", f"its squares reach {self.where} before a sum over their axis")
                self.vars.union(source, axis, why=self.where)

    def same(self, a, b, what):
        constants = self.walker.result.constants
        if a in constants or b in constants:
            # one number everywhere (T5's zeros(1, heads, q, k) bias, reused by every block): no
            # space to share; meeting it is at most a constant shift of the other operand's axis
            other = b if a in constants else a
            self.settle(other)
            if other not in constants:
                self.vars.flag(other, "shift", self._why(what))
            return other
        self.settle(a, b)
        self.vars.union(a, b, why=self.where)
        return a

    combine = same

    def constant_axis(self, size, why):
        var = self.vars.new(size)
        self.walker.result.constants.add(var)
        return var

    def contract(self, a, b, what):
        self.settle(a, b)
        self.vars.union(a, b, flip=True, why=self.where)

    def nonlinear(self, axis, what=None):
        self.settle(axis)
        self.vars.flag(axis, "nonlinear", self._why(what))

    def indexes(self, axis, what):
        # topk over the router's logits: positions are experts; only permutations keep them
        self.nonlinear(axis, what)
        self.vars.flag(axis, "indexed", self._why(what))

    def square(self, axis):
        self.settle(axis)                   # squares of squares: not a norm
        var = self.vars.new(self.vars.size(axis))
        self.vars.flag(var, "touched")
        self.walker.result.squares[var] = axis
        return var

    def shift(self, axis, what=None):
        self.settle(axis)
        self.vars.flag(axis, "shift", f"a constant is added along this axis ({self.where})")

    def summed(self, axis):
        squares = self.walker.result.squares
        if axis in squares:
            self.vars.flag(squares[axis], "isometric", f"a sum of its squares, a norm ({self.where})")
            self.vars.union(squares[axis], axis, why=self.where)
            return
        self.vars.flag(axis, "shift", f"summed over ({self.where})")

    def offset(self, axis, what):
        # 1 + weight: a shift of the weight's space, unless the sum is used as a gain that is then
        # folded (Gemma); flagged apart so that :meth:`gain` can take it back
        self.settle(axis)
        self.vars.flag(axis, "offset", self._why(what))

    def gain(self, axis, gain_axis, index, what):
        self.settle(axis, gain_axis)
        found = self.gain_form(index)
        name, form = found if found and found[0] in self.walker.result.param_axes else ("?", "weight")
        if form == "one_plus":
            # the offset belongs to this gain alone (its class holds only the parameter's axis so
            # far): folding stores the gain 1 + w in the readers and w = 0, so no shift remains
            self.vars.flags(gain_axis).pop("offset", None)
        self.vars.union(gain_axis, axis, why=self.where)
        self.vars.flag(axis, "gain", self.where)
        self.walker.result.norms.append((self.node.name, "gain", axis, name, None, form))
        return axis

    def rotary(self, axis, layout, what, table=None):
        # only a kind whose elements commute with RoPE's pair rotations may act here: recorded,
        # and the draft asks the registered kinds for one (symdsl.infer.draft)
        self.settle(axis)
        if table is not None:
            self.settle(table)
            self.vars.flag(table, "fixed", self._why(f"{what}: the table"))
        self.vars.flag(axis, "rotary", self._why(what))
        self.walker.result.rotary.append((axis, layout))

    def fixed(self, axis, why):
        self.settle(axis)
        self.vars.flag(axis, "fixed", self._why(why))

    def normalize(self, axis, *, gain, bias, centred):
        self.settle(axis)
        kind = "ln" if centred else "rms"
        params = {}
        for label, index in (("weight", gain), ("bias", bias)):
            if index is not None:
                self.vars.union(self.tensor(index)[-1], axis, why=self.where)
                params[label] = self.param(index) or "?"
        self.vars.flag(axis, kind, self.where)
        self.walker.result.norms.append((self.node.name, kind, axis, params.get("weight"), params.get("bias"), "weight"))

    def hint(self, axis, role):
        self.settle(axis)
        self.vars.flag(axis, role, self.where)
        if role == "qk":
            self.vars.vote(axis, strong=True)      # queries are written primal, keys dual

    def _use(self, index: int, axis: int, role: str) -> None:
        name = self.param(index)
        if name is not None:
            self.walker.result.uses.append((self.node.name, name, axis, role, self.node.module))

    def reads(self, index, axis):
        self._use(index, axis, "read")

    def writes(self, index, axis):
        if self.param(index) is not None:
            self.vars.vote(self.walker.result.param_axes[self.param(index)][axis])
        self._use(index, axis, "write")

    def split_axis(self, axis, sizes, what):
        self.settle(axis)
        if len(sizes) == 1:
            return [axis]
        parts = self.vars.expand(axis, "sum", list(sizes))
        if parts is None:
            raise Unsupported(f"{what} of an axis that is already split differently")
        return parts

    def take(self, axis, start, size, what):
        """A range of ``axis`` (slice): the axis becomes fused, its parts cut at every boundary that
        the slices of this tensor along this dimension use (Phi-3's ``qkv[..., :q]``,
        ``qkv[..., q:q + kv]``, ...; a head's rotary part ``q[..., :r]`` and the rest), and the
        range is those parts. Boundaries that do not fit a structure the axis already has leave it
        to the default (fixed)."""
        self.settle(axis)
        total, end = self.vars.size(axis), start + size
        bounds = sorted({0, total, *self._sibling_bounds(total)})
        parts = self.vars.expand(axis, "sum", [b - a for a, b in zip(bounds, bounds[1:])])
        if parts is None:
            existing = self.vars.struct.get(self.vars.root(axis))
            sizes = [self.vars.size(c) for c, _ in existing.children] if existing and existing.kind == "sum" else []
            bounds = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
            parts = self.vars.expand(axis, "sum", sizes) if start in bounds and end in bounds else None
        if parts is None:
            return super().take(axis, start, size, what)
        picked = [p for p, a in zip(parts, bounds) if start <= a < end]
        return picked[0] if len(picked) == 1 else self.vars.new_sum(picked)

    def _sibling_bounds(self, total: int) -> set[int]:
        """Start and end of every unit-step slice of this node's input along the same dimension."""
        source, dim = self.node.args[0], self.arg(1, 0)
        rank = len(self.node.shape or ())
        out: set[int] = set()
        for user in self.graph.users(source.name):
            if user.op != "slice" or not user.args or user.args[0] != source:
                continue
            args = list(user.args) + [None] * 5
            if rank == 0 or (args[1] or 0) % rank != dim % rank or args[4] not in (None, 1):
                continue
            if not all(isinstance(v, (int, type(None))) for v in args[2:4]):
                continue
            lo = 0 if args[2] is None else args[2] + total if args[2] < 0 else args[2]
            hi = total if args[3] is None else args[3] + total if args[3] < 0 else args[3]
            out |= {min(max(lo, 0), total), min(max(hi, 0), total)}
        return out

    def join_axes(self, pieces):
        self.settle(*pieces)
        pieces = [p for p in pieces if self.vars.size(p) > 0]
        return pieces[0] if len(pieces) == 1 else self.vars.new_sum(pieces)

    # -- reshape algebra: factors are the leaves of product variables; sums stay whole ----------
    def factors(self, axis) -> list:
        self.settle(axis)
        return [a for a in self.vars.factors(axis) if self.vars.size(a) != 1]

    def item_size(self, item) -> int:
        return self.vars.size(item)

    def cut(self, item, outer, shape):
        pieces = self.vars.expand(item, "prod", [outer, self.vars.size(item) // outer])
        if pieces is None:
            raise Unsupported(f"reshape to {shape} splits an axis that is already split differently")
        return pieces

    def fused_parts(self, item, count, wanted):
        if not wanted:
            return None
        parts = self.vars.expand(item, "sum", [self.vars.size(item) // count] * count)
        if parts is None:
            raise Unsupported("a fused axis is cut in a way that does not match its parts")
        return parts

    def join(self, items):
        return items[0] if len(items) == 1 else self.vars.new_product(items)
