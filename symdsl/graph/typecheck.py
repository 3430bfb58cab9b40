"""The checker's side of the op-rule interface: statements about axes checked on site types.

Each axis carries a type (:mod:`symdsl.graph.types`): factors bound to spec sites with a
variance. :class:`CheckCall` implements :class:`~symdsl.graph.walker.OpCall`'s interface by
checking what a rule states against those types and raising :class:`Violation` when a site
cannot follow (a rotation reaching GELU, a key bound primal, a head split in the wrong factor
order). Group kinds are asked for capabilities, never for names:

* ``nonlinear`` (GELU, an elementwise product, dropout in training): ``elementwise_equivariant``;
* ``indexes`` (topk's indices: positions of an axis): ``permutes_positions``;
* ``shift`` and ``summed`` (a constant added, a mean/sum): ``elementwise_equivariant`` or
  ``fixes_ones(site.options)``;
* ``square`` (``x ** 2``, ``x * x``): ``elementwise_equivariant`` kinds keep the axis; any other
  site's factor becomes *squared* (``resid^2``), which only ``summed`` accepts, and only for
  ``isometric`` kinds (||g x||^2 = ||x||^2: the sum is invariant, its axis carries no site);
  any other statement about a squared factor is a violation;
* ``gain`` (a per-feature parameter scaling an axis): a gain bound to the axis's sites is an
  elementwise product (``nonlinear``); an unbound gain must be constant (the parameter's actual
  value, e.g. 1 after ``fold_layernorm``): c·1 scales every coordinate alike;
* ``normalize``: ``elementwise_equivariant`` kinds pass (gain and bias carry the site);
  otherwise the kind must be ``isometric`` and square, the gain constant, and a centred norm
  (LayerNorm) needs ``fixes_ones(site.options)``;
* ``contract``: primal against dual unless the kind is ``self_dual``;
* ``rotary`` (RoPE's ``rotate_half``, a product with a pair-constant cos/sin table): the axis
  must be one site alone whose kind's ``rotary_layout(site.options)`` is the model's layout
  (its elements are one scaled rotation per pair, which commute with those maps).
"""
from __future__ import annotations

from .types import (Atom, SplitAxis, atoms_of, axis_size, axis_typed, is_zero, normalize, same_atoms, show_axis,
                    untyped, untyped_axis)
from .walker import OpCall


class Violation(Exception):
    """An op breaks a declared symmetry."""

    def __init__(self, message: str, site: str | None = None, rule: str = ""):
        super().__init__(message)
        self.message, self.site, self.rule = message, site, rule


def _first_site(axis) -> str | None:
    return next((a.site for a in atoms_of(axis) if a.site), None)


class CheckCall(OpCall):
    """One node seen by the static check: ``walker.sites`` are the resolved spec's sites and
    ``walker.parameter(node)`` a parameter's actual tensor (for constant-gain checks)."""

    # -- sites ------------------------------------------------------------------------------
    @property
    def sites(self) -> dict:
        return self.walker.sites

    def describe(self, site: str) -> str:
        s = self.sites[site]
        extra = ", preserve ones" if s.options.get("preserve") == "ones" else ""
        per = f", per {s.per}" if s.per else ""
        return f"site {site} ({s.kind.name}{extra}{per})"

    def fail(self, message: str, site: str | None = None, rule: str | None = None):
        raise Violation(message, site, rule or self.node.op)

    def output_untyped(self):
        shape = self.node.shape
        if shape is None:
            return None
        if shape and isinstance(shape[0], tuple):
            return [untyped(s) for s in shape]
        return untyped(shape)

    def _kinds(self, axis):
        return [(a.site, self.sites[a.site]) for a in atoms_of(axis) if a.site]

    def _keeps_ones(self, site) -> bool:
        return site.kind.elementwise_equivariant or site.kind.fixes_ones(site.options)

    def _pending(self, axis, what: str | None = None) -> None:
        """Squares of a site (``resid^2``) may reach only a sum over their axis."""
        squared = next((a for a in atoms_of(axis) if a.squared), None)
        if squared is not None:
            self.fail(f"{what or self.op} acts on the squares of {self.describe(squared.site)} before they are summed "
                      "over their axis; only a sum or mean of the squares over that axis (a norm) is invariant",
                      squared.site)

    # -- axes ---------------------------------------------------------------------------------
    def size(self, axis) -> int:
        return axis_size(axis)

    def is_unit(self, axis) -> bool:
        return axis_size(axis) == 1 and not axis_typed(axis)

    def new_axis(self, size, fixed=None, *, broadcast=None):
        return (Atom(size, repeated=True),) if broadcast else untyped_axis(size)

    def same(self, a, b, what):
        if not self._same_space(a, b):
            self.fail(f"{what}: {show_axis(a)} does not match {show_axis(b)}", _first_site(a) or _first_site(b))
        return a

    def _same_space(self, a, b) -> bool:
        """Factor by factor the same sites; a factor of copies (``expand``: the tensor is constant
        along it, e.g. grouped-query attention's keys repeated for the g query heads of their
        key/value head) also matches a site whose elements fix the ones vector (``g 1 = 1``: a
        permutation of the query heads inside each group leaves the copies as they are). An axis of
        zeros (a zero buffer) matches any axis of its size: ``g 0 = 0`` for every linear g."""
        if is_zero(a) or is_zero(b):
            return axis_size(a) == axis_size(b)
        if isinstance(a, SplitAxis) or isinstance(b, SplitAxis):
            return (isinstance(a, SplitAxis) and isinstance(b, SplitAxis) and len(a.parts) == len(b.parts)
                    and all(self._same_space(x, y) for x, y in zip(a.parts, b.parts)))
        la, lb = self._significant(a), self._significant(b)
        return len(la) == len(lb) and all(self._same_item(x, y) for x, y in zip(la, lb))

    def _same_item(self, x, y) -> bool:
        if isinstance(x, SplitAxis) or isinstance(y, SplitAxis):      # (heads [qk | qkp])
            return isinstance(x, SplitAxis) and isinstance(y, SplitAxis) and self._same_space(x, y)
        return same_atoms(x, y) or self._copies_fit(x, y) or self._copies_fit(y, x)

    def _copies_fit(self, copies: Atom, other: Atom) -> bool:
        if not copies.repeated or copies.site or other.site is None or copies.size != other.size:
            return False
        site = self.sites[other.site]
        return site.kind.fixes_ones(site.options)

    def combine(self, a, b, what):
        if self._same_space(a, b):
            return a if axis_typed(a) else b
        typed, plain = (a, b) if axis_typed(a) else (b, a)
        site = _first_site(typed)
        if site is None:
            return a
        if axis_typed(plain):
            self.fail(f"{what} combines {show_axis(a)} with {show_axis(b)}: both sides must carry the same sites", site)
        self.fail(f"{what} combines {self.describe(site)} with a tensor that no site touches along that axis "
                  "(a fixed vector does not transform with the symmetry)", site)

    def contract(self, a, b, what):
        """Axis ``a`` (activation side) summed against ``b``: the same sites factor by factor,
        primal against dual unless the kind is self-dual; bound never meets unbound."""
        if not axis_typed(a) and not axis_typed(b):
            return
        self._pending(a, what)
        self._pending(b, what)
        if isinstance(a, SplitAxis) or isinstance(b, SplitAxis):
            if not (isinstance(a, SplitAxis) and isinstance(b, SplitAxis) and len(a.parts) == len(b.parts)):
                self.fail(f"{what} contracts a fused axis with an axis of another structure: "
                          f"{show_axis(a)} · {show_axis(b)}")
            for x, y in zip(a.parts, b.parts):
                self.contract(x, y, what)
            return
        la, ra = self._significant(a), self._significant(b)
        if any(isinstance(x, SplitAxis) for x in la + ra):
            # a split nested in a composite, (heads [qk | qkp]): the same structure, item by item
            if len(la) != len(ra) or any(isinstance(x, SplitAxis) != isinstance(y, SplitAxis) for x, y in zip(la, ra)):
                self.fail(f"{what} contracts {show_axis(a)} with {show_axis(b)}: the same sites must meet factor by "
                          "factor (a reader's input axis must be bound to the site its input carries)", _first_site(a))
            for x, y in zip(la, ra):
                self.contract(x if isinstance(x, SplitAxis) else (x,), y if isinstance(y, SplitAxis) else (y,), what)
            return
        if [x.size for x in la] != [y.size for y in ra] or [x.site for x in la] != [y.site for y in ra]:
            site = next((x.site for x in la + ra if x.site), None)
            self.fail(f"{what} contracts {show_axis(a)} with {show_axis(b)}: the same sites must meet factor by "
                      "factor (a reader's input axis must be bound to the site its input carries)", site)
        for x, y in zip(la, ra):
            if x.site and x.dual == y.dual and not self.sites[x.site].kind.self_dual:
                side = "dual" if x.dual else "primal"
                self.fail(f"{what} contracts {self.describe(x.site)} with itself, both sides {side}: one side must "
                          f"be dual (g^-T), e.g. write {x.site}' on the reader's input axis or on the key side", x.site)

    def nonlinear(self, axis, what=None):
        self._pending(axis, what)
        for name, site in self._kinds(axis):
            if not site.kind.elementwise_equivariant:
                self.fail(f"{self.describe(name)} reaches {what or self.op}, which commutes only with permutations",
                          name)

    def indexes(self, axis, what):
        self._pending(axis, what)
        for name, site in self._kinds(axis):
            if not site.kind.permutes_positions:
                self.fail(f"{what} acts on {self.describe(name)}: which positions rank highest (and where they are) "
                          "is kept only by a permutation of the positions, one to one", name)

    def square(self, axis):
        if isinstance(axis, SplitAxis):
            return SplitAxis(tuple(self.square(p) for p in axis.parts))
        self._pending(axis, f"{self.op} (a square of squares)")
        return tuple(Atom(a.size, a.site, a.dual, True) if a.site and not self.sites[a.site].kind.elementwise_equivariant
                     else a for a in axis)

    def shift(self, axis, what=None):
        for atom in atoms_of(axis):
            if atom.site and not self._keeps_ones(self.sites[atom.site]):
                self._pending(axis, what)
                self.fail(f"{what or self.op} adds a constant to {self.describe(atom.site)}; only permutations and "
                          "rotations fixing the ones vector keep a constant vector fixed", atom.site)

    def summed(self, axis):
        for atom in atoms_of(axis):
            if not atom.site:
                continue
            site = self.sites[atom.site]
            if atom.squared:
                if not site.kind.isometric:
                    self.fail(f"{self.op} of the squares of {self.describe(atom.site)} is not invariant: only isometric "
                              "kinds (rotations, permutations) keep a sum of squares ||g x||^2 = ||x||^2", atom.site)
            elif not self._keeps_ones(site):
                self.fail(f"{self.op} over an axis carrying {self.describe(atom.site)} is not invariant", atom.site)

    def gain(self, axis, gain_axis, index, what):
        if axis_typed(gain_axis) or not axis_typed(axis):
            out = self.combine(axis, gain_axis, what)        # a gain bound to the sites moves with them
            self.nonlinear(axis, f"an elementwise product ({what})")
            return out
        source = self.param_source(index)
        if source is not None and _constant(self.walker.parameter(source[0])):
            return axis                                      # c·1: every coordinate scaled alike
        site = _first_site(axis)
        gain_name = self.graph.params.get(source[0], [source[0]])[0] if source else f"argument {index}"
        self.fail(f"{self.describe(site)} is scaled by the per-feature gain {gain_name} ({what}), which is neither "
                  f"bound to the site nor constant: fold it into the readers (fold_layernorm with 'site: {site}'; "
                  "its value is then 1), or bind it to the site (permutations only)", site)

    def rotary(self, axis, layout, what, table=None):
        if table is not None and axis_typed(table):
            # the table moves with a site: an elementwise product of two varying operands
            self.combine(axis, table, what)
            self.nonlinear(axis, f"an elementwise product ({what})")
            return
        if not axis_typed(axis):
            return
        self._pending(axis, what)
        pairs = "i with i + n/2" if layout == "half" else "2i with 2i + 1"
        for name, site in self._kinds(axis):
            have = site.kind.rotary_layout(site.options)
            if have is None:
                self.fail(f"{what} acts on {self.describe(name)}: the rotary position embedding turns each coordinate "
                          f"pair ({pairs}) by a position-dependent angle, and {_article(site.kind.name)} {site.kind.name} map does not "
                          f"commute "
                          f"with it (only one scaled rotation per pair does): declare the site 'group: rotary'"
                          + (f" with 'pairs: {layout}'" if layout != "half" else ""), name)
            if have != layout:
                self.fail(f"{what} acts on {self.describe(name)}, whose pairs are '{have}', but the model's rotary "
                          f"position embedding pairs {pairs}: set 'pairs: {layout}'", name)
        if isinstance(axis, SplitAxis) or len(normalize(axis)) != 1:
            self.fail(f"{what} acts on the composite axis {show_axis(axis)}: the rotary position embedding's pairs "
                      "line up with a rotary site only when it is alone on the axis", _first_site(axis))

    def fixed(self, axis, why):
        if axis_typed(axis):
            self.fail(f"{why}: no symmetry may move this axis, but it carries {show_axis(axis)}", _first_site(axis))

    def normalize(self, axis, *, gain, bias, centred):
        what = self.op
        self._pending(axis, what)
        gain_type = self.tensor(gain) if gain is not None else None
        bias_type = self.tensor(bias) if bias is not None else None
        kinds = self._kinds(axis)
        if not kinds:
            for param in (gain_type, bias_type):
                site = next((s for a in (param or ()) for s in [_first_site(a)] if s), None)
                if site:
                    self.fail(f"{what} parameters carry {self.describe(site)} but its input does not", site)
            return
        for name, site in kinds:
            kind = site.kind
            if kind.elementwise_equivariant:
                continue
            if not (kind.isometric and kind.square):
                self.fail(f"{self.describe(name)} reaches {what}, which commutes only with permutations and "
                          "rotations", name)
            if centred and not kind.fixes_ones(site.options):
                self.fail(f"{self.describe(name)} reaches {what}: LayerNorm subtracts the mean, so a rotation must "
                          "fix the ones vector (add 'preserve: ones'), or use the permutation group", name)
            if len(normalize(axis)) != 1:
                self.fail(f"{what} over a composite axis {show_axis(axis)} carrying a rotation has no rule", name)
            if gain is not None and not _constant(self.parameter(gain)):
                self.fail(f"{self.describe(name)} reaches {what} whose gain is not constant: a rotation does not "
                          "commute with a per-feature gain (fold it into the readers with fold_layernorm; post-LN "
                          "models such as BERT keep the gain on the residual path and admit only permutations)", name)
        if bias_type is not None:
            self.same(bias_type[0], axis, f"{what} bias")
        if gain_type is not None and all(site.kind.elementwise_equivariant for _, site in kinds):
            self.same(gain_type[0], axis, f"{what} gain")

    def parameter(self, index: int):
        name = self.param(index)
        return self.walker.parameter(name) if name is not None else None

    def split_axis(self, axis, sizes, what):
        if len(sizes) == 1:
            return [axis]
        if not axis_typed(axis):
            return [untyped_axis(s) for s in sizes]
        if isinstance(axis, SplitAxis):
            pieces = _part_ranges(axis, sizes)
            if pieces is not None:
                return pieces
        site = None if isinstance(axis, SplitAxis) else _first_site(axis)
        self.fail(f"{what} cuts the axis {show_axis(axis)} into {list(sizes)}, which is not its declared parts "
                  "(check the order and sizes of the fused split in the spec)", site)

    def join_axes(self, pieces):
        if not any(axis_typed(p) for p in pieces):
            return untyped_axis(sum(axis_size(p) for p in pieces))
        pieces = [p for p in pieces if axis_size(p) > 0]          # an empty piece adds nothing
        return pieces[0] if len(pieces) == 1 else normalize(SplitAxis(tuple(pieces)))

    def take(self, axis, start, size, what):
        # a range of a fused axis at its parts' boundaries is those parts (Phi-3's qkv[..., :q],
        # partial rotary's q[..., :rotary_dim] of a head typed [qk | qkp]); anything else cuts it
        if isinstance(axis, SplitAxis):
            before = _part_ranges(axis, [start, size, axis_size(axis) - start - size])
            if before is not None:
                return before[1]
        return super().take(axis, start, size, what)

    # -- reshape algebra: factors are Atoms; a fused axis is one opaque SplitAxis factor ----------
    def factors(self, axis) -> list:
        if isinstance(axis, SplitAxis):
            return [axis]
        return self._significant(axis)

    def _significant(self, axis) -> list:
        """The axis's factors without those of size 1 that carry nothing or only the identity
        (a split nested in a composite axis is kept as one item)."""
        return [a for a in normalize(axis) if isinstance(a, SplitAxis)
                or not (a.size == 1 and (a.site is None or self._trivial(a.site)))]

    def _trivial(self, site: str) -> bool:
        # one position that only moves as a whole (a permutation of 1): its only element is the
        # identity, so a reshape may put it on either side (e.g. one query head per key/value head)
        return self.sites[site].kind.permutes_positions

    def item_size(self, item) -> int:
        return item.size

    def cut(self, item, outer, shape):
        if isinstance(item, SplitAxis):
            self.fail(f"reshape cuts the fused axis {item} across its parts")
        if item.site:
            self.fail(f"reshape to {shape} cuts factor {item} (size {item.size}) of {self.describe(item.site)}: "
                      "the factor order or sizes of this axis are wrong", item.site)
        return [Atom(outer, repeated=item.repeated), Atom(item.size // outer, repeated=item.repeated)]

    def fused_parts(self, item, count, wanted):
        # a fused axis cut at its parts count, when the parts have one structure (q | k | v)
        if isinstance(item, SplitAxis) and len(item.parts) == count and len({axis_size(p) for p in item.parts}) == 1:
            return list(item.parts)
        return None

    def join(self, items):
        if len(items) == 1 and isinstance(items[0], SplitAxis):
            return items[0]
        # a fused axis joined with other factors is a split nested in a composite: (heads [qk | qkp])
        return tuple(items)


def _part_ranges(axis: SplitAxis, sizes) -> list | None:
    """``axis`` cut into consecutive ``sizes`` along its parts' boundaries: each piece one part,
    a fused axis of several consecutive parts, or an empty axis; None when a cut falls inside a part.

    >>> a, b, c = (Atom(2, "a"),), (Atom(6, "b"),), (Atom(8, "c"),)
    >>> [show_axis(p) for p in _part_ranges(SplitAxis((a, b, c)), [8, 0, 8])]
    ['[a | b]', '_0', 'c']
    """
    parts = list(normalize(axis).parts)
    out, i = [], 0
    for size in sizes:
        group, total = [], 0
        while total < size and i < len(parts):
            group.append(parts[i])
            total += axis_size(parts[i])
            i += 1
        if total != size:
            return None
        out.append(untyped_axis(0) if not group else group[0] if len(group) == 1 else SplitAxis(tuple(group)))
    return out if i == len(parts) else None


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _constant(tensor) -> bool:
    return tensor is not None and bool((tensor == tensor.reshape(-1)[0]).all())


__all__ = ["CheckCall", "Violation"]
