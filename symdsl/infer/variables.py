"""Axis variables: a union-find with variance (parity) and structure, the core of spec inference.

Every axis of every value in the traced graph gets a *variable*: the vector space that axis
indexes. Ops force variables to be the same space (``union``), possibly as each other's dual
(a contraction ``x · W`` makes W's input axis the dual of x's feature axis: ``flip=True``).
A variable may later turn out to be composite: a head split ``(d) -> (h, k)`` expands it into a
row-major *product* of child variables, a fused ``split`` into a *sum* (direct sum, q | k | v).
Uniting two expanded variables unites their children pairwise, so the structure found on one
side of a contraction carries over to the other.

Classes also collect *flags*, the facts that limit which group may act on the space
(``fixed``: touches a model input/output or an op we cannot interpret; ``nonlinear``: reaches an
elementwise nonlinearity; ``ln``/``rms``: reaches a norm; ``gain``: scaled by a per-feature
parameter; ``isometric``: a sum of its squares is taken; ``shift``: a constant vector is
added to it or it is summed over ...), each with a few evidence strings for the comments of
the draft, and orientation *votes* (which side of a class is written primal in the spec).
"""
from __future__ import annotations

from dataclasses import dataclass, field

# flags that restrict every factor of a composite space, so leaves inherit them from the
# composite classes they are part of (see AxisVars.effective_flags)
# flags a composite axis passes to its factors and a fused axis to its parts ('heads': the factors
# of grouped-query attention's head axis (key/value head, query head inside its group) are head
# axes too; 'qk': a head's rotary and pass-through parts are both query/key bases)
INHERITED = ("fixed", "nonlinear", "shift", "self_dual", "isometric", "heads", "qk", "ov")
MAX_EVIDENCE = 4


@dataclass
class Struct:
    """How a class decomposes: ``kind`` 'prod' (row-major factors) or 'sum' (fused parts).

    ``children`` are ``(var, bit)``: the i-th factor/part of the class *root* is ``var``,
    dual when ``bit`` is 1.
    """

    kind: str
    children: list[tuple[int, int]]


@dataclass
class _Class:
    """Per-root bookkeeping, merged when two classes unite."""

    flags: dict[str, list[str]] = field(default_factory=dict)   # flag -> evidence strings
    votes: list[list[int]] = field(default_factory=lambda: [[0, 0], [0, 0]])  # [strength][orientation]


class AxisVars:
    """Union-find over axis variables with parity (dual or not), sizes and structure.

    >>> v = AxisVars()
    >>> x, w = v.new(4), v.new(4)
    >>> v.union(x, w, flip=True)            # W's input axis reads x: it is x's dual
    >>> v.find(w)[0] == v.find(x)[0], v.parity_between(x, w)
    (True, 1)
    >>> h, k = v.expand(x, "prod", [2, 2])  # x seen as (heads, head_dim)
    >>> [v.size(c) for c in (h, k)]
    [2, 2]
    """

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.bit: list[int] = []          # parity relative to parent: 1 = the dual of the parent
        self.sizes: list[int] = []
        self.struct: dict[int, Struct] = {}
        self.info: dict[int, _Class] = {}

    # -- basics -------------------------------------------------------------------------
    def new(self, size: int, flag: str | None = None, why: str = "") -> int:
        """A fresh variable of ``size``, optionally flagged at once."""
        var = len(self.parent)
        self.parent.append(var)
        self.bit.append(0)
        self.sizes.append(int(size))
        self.info[var] = _Class()
        if flag:
            self.flag(var, flag, why)
        return var

    def size(self, var: int) -> int:
        return self.sizes[var]

    def find(self, var: int) -> tuple[int, int]:
        """``(root, parity)``: ``var`` is the root's space, or its dual when parity is 1."""
        path = []
        while self.parent[var] != var:
            path.append(var)
            var = self.parent[var]
        root = var
        # path compression: re-hang every visited node on the root with its accumulated parity
        acc = 0
        for node in reversed(path):
            acc ^= self.bit[node]
            self.bit[node] = acc
            self.parent[node] = root
        return (root, self.bit[path[0]]) if path else (root, 0)

    def root(self, var: int) -> int:
        return self.find(var)[0]

    def parity_between(self, a: int, b: int) -> int | None:
        """1 when ``b`` is the dual of ``a``, 0 when it is the same space, None when unrelated."""
        (ra, pa), (rb, pb) = self.find(a), self.find(b)
        return pa ^ pb if ra == rb else None

    # -- facts ----------------------------------------------------------------------------
    def flag(self, var: int, flag: str, why: str = "") -> None:
        """Record ``flag`` on ``var``'s class (with a short evidence string)."""
        evidence = self.info[self.root(var)].flags.setdefault(flag, [])
        if why and why not in evidence and len(evidence) < MAX_EVIDENCE:
            evidence.append(why)

    def flags(self, var: int) -> dict[str, list[str]]:
        return self.info[self.root(var)].flags

    def vote(self, var: int, primal: bool = True, strong: bool = False) -> None:
        """Prefer writing ``var`` primal (or dual) in the spec; strong votes win over weak ones."""
        root, parity = self.find(var)
        orientation = parity if primal else parity ^ 1   # root orientation that makes var primal
        self.info[root].votes[int(strong)][orientation] += 1

    def orientation(self, var: int) -> int:
        """1 when the class's root is written dual, so that most votes come out as wished."""
        votes = self.info[self.root(var)].votes
        for strength in (1, 0):
            zero, one = votes[strength]
            if zero != one:
                return 0 if zero > one else 1
        return 0

    # -- union ----------------------------------------------------------------------------
    def union(self, a: int, b: int, flip: bool = False, why: str = "") -> None:
        """Make ``a`` the same space as ``b`` (``flip``: its dual). Conflicts become flags."""
        (ra, pa), (rb, pb) = self.find(a), self.find(b)
        want = pa ^ pb ^ int(flip)          # parity of rb relative to ra after the union
        if ra == rb:
            if want:
                # a space that must equal its own dual: only self-dual groups (g^-T = g) act on it
                self.flag(ra, "self_dual", why or "a space is contracted with itself")
            return
        if self.sizes[ra] != self.sizes[rb]:
            self.flag(ra, "fixed", f"sizes {self.sizes[ra]} and {self.sizes[rb]} meet ({why})")
            self.flag(rb, "fixed", f"sizes {self.sizes[ra]} and {self.sizes[rb]} meet ({why})")
            return
        self.parent[rb], self.bit[rb] = ra, want
        into, other = self.info[ra], self.info.pop(rb)
        for name, evidence in other.flags.items():
            mine = into.flags.setdefault(name, [])
            mine.extend(e for e in evidence if e not in mine and len(mine) < MAX_EVIDENCE)
        for strength in (0, 1):
            for orientation in (0, 1):
                into.votes[strength][orientation] += other.votes[strength][orientation ^ want]
        sa, sb = self.struct.get(ra), self.struct.pop(rb, None)
        if sb is None:
            return
        if sa is None:
            self.struct[ra] = Struct(sb.kind, [(c, bit ^ want) for c, bit in sb.children])
            return
        if sa.kind != sb.kind or [self.sizes[c] for c, _ in sa.children] != [self.sizes[c] for c, _ in sb.children]:
            self.flag(ra, "fixed", f"two incompatible splits of one axis meet ({why})")
            for c, _ in sa.children + sb.children:
                self.flag(c, "fixed", f"two incompatible splits of one axis meet ({why})")
            return
        for (ca, ba), (cb, bb) in zip(sa.children, sb.children):
            self.union(ca, cb, flip=bool(ba ^ bb ^ want), why=why)

    # -- structure ------------------------------------------------------------------------
    def expand(self, var: int, kind: str, sizes: list[int]) -> list[int] | None:
        """Plain variables for the factors ('prod') or parts ('sum') of ``var``.

        Creates the structure if the class has none; returns None when the class already
        has a different one (the caller then treats the op conservatively).
        """
        root, parity = self.find(var)
        existing = self.struct.get(root)
        if existing is None:
            children = [self.new(s) for s in sizes]
            for child in children:
                self.info[child].flags.update({"touched": []})
            self.struct[root] = Struct(kind, [(c, 0) for c in children])
            existing = self.struct[root]
        elif existing.kind != kind or [self.sizes[c] for c, _ in existing.children] != list(sizes):
            return None
        return [self.aliased(c, bit ^ parity) for c, bit in existing.children]

    def aliased(self, var: int, bit: int) -> int:
        """``var`` itself, or a fresh variable declared its dual when ``bit`` is 1."""
        if not bit:
            return var
        alias = self.new(self.sizes[var])
        self.union(var, alias, flip=True)        # in this order, var's class keeps its root
        return alias

    def new_product(self, factors: list[int]) -> int:
        """A fresh variable that *is* the row-major product of ``factors`` (a merge reshape)."""
        size = 1
        for f in factors:
            size *= self.sizes[f]
        var = self.new(size)
        self.info[var].flags["touched"] = []
        self.struct[var] = Struct("prod", [(f, 0) for f in factors])
        return var

    def new_sum(self, parts: list[int]) -> int:
        """A fresh variable that is the concatenation of ``parts`` (torch.cat)."""
        var = self.new(sum(self.sizes[p] for p in parts))
        self.info[var].flags["touched"] = []
        self.struct[var] = Struct("sum", [(p, 0) for p in parts])
        return var

    def structure(self, var: int) -> tuple[str, list[int]] | None:
        """``(kind, plain child variables)`` of ``var``'s class, or None for a leaf."""
        root, parity = self.find(var)
        s = self.struct.get(root)
        if s is None:
            return None
        return s.kind, [self.aliased(c, bit ^ parity) for c, bit in s.children]

    def factors(self, var: int) -> list[int]:
        """The leaves of ``var``'s product structure, in row-major order (sums stay whole)."""
        s = self.structure(var)
        if s is None or s[0] != "prod":
            return [var]
        return [leaf for child in s[1] for leaf in self.factors(child)]

    def effective_flags(self) -> dict[int, dict[str, list[str]]]:
        """Flags of every class root including those inherited from composite classes above it.

        A norm (or a per-feature gain) over a composite axis limits its factors to permutations:
        'ln'/'rms'/'gain' on a structured class become 'nonlinear' for the leaves below it.
        """
        parents: dict[int, set[int]] = {}
        for root, s in self.struct.items():
            if self.root(root) != root:
                continue
            for child, _ in s.children:
                parents.setdefault(self.root(child), set()).add(root)
        memo: dict[int, dict[str, list[str]]] = {}

        def inherited(root: int, depth: int = 0) -> dict[str, list[str]]:
            if root in memo:
                return memo[root]
            out = {k: list(v) for k, v in self.info[root].flags.items()}
            memo[root] = out
            if depth > 64:
                return out
            for parent in parents.get(root, ()):
                above = inherited(parent, depth + 1)
                for name, evidence in above.items():
                    target = name if name in INHERITED + ("touched",) else \
                        "nonlinear" if name in ("ln", "rms", "gain") and parent in self.struct else None
                    if target:
                        mine = out.setdefault(target, [])
                        mine.extend(e for e in evidence if e not in mine and len(mine) < MAX_EVIDENCE)
            return out

        return {root: inherited(root) for root in list(self.info)}
