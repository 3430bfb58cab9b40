"""Pick the largest group each coupled axis component admits, from the facts the walk found.

From largest to smallest: ``invertible`` (the space is only read and written linearly: a
head's query/key or value/output basis), ``orthogonal`` (it is read by RMS norms whose gains
fold away, or a sum of its squares is taken: a hand-written norm, invariant under isometries;
a per-feature parameter gain that folds away leaves it orthogonal too), ``orthogonal`` with ``preserve: ones`` (LayerNorms subtract the mean; a constant is
added or the space is summed over), ``permutation`` (an elementwise nonlinearity, the head
axis of attention, an elementwise product, or a norm whose gain cannot be folded). A
component that touches a model input or output, or an op the walk could not interpret, is
left unbound.
"""
from __future__ import annotations

from dataclasses import dataclass, field

LEVELS = ("permutation", "orthogonal_ones", "orthogonal", "invertible")   # smallest to largest
ROLE_ORDER = ("heads", "qk", "ov")


@dataclass
class Decision:
    """The group chosen for one component (a class root), with the evidence behind it."""

    root: int
    size: int
    level: str                                   # one of LEVELS
    role: str                                    # heads / qk / ov / mlp / linear
    why: list[str] = field(default_factory=list)
    folds: list = field(default_factory=list)    # FoldPlans of the norms to fold (orthogonal kinds)
    per: int | None = None                       # root of the permutation site it is per-index of
    kind: str | None = None                      # a registered kind chosen by capability (rotary q/k)
    options: dict = field(default_factory=dict)  # that kind's options

    @property
    def group(self) -> str:
        if self.kind is not None:
            return self.kind
        return "orthogonal" if self.level.startswith("orthogonal") else self.level

    @property
    def preserve(self) -> str | None:
        return "ones" if self.level == "orthogonal_ones" else None


def _lower(level: str, cap: str) -> str:
    return level if LEVELS.index(level) <= LEVELS.index(cap) else cap


def _first(evidence: list[str]) -> str:
    return f" ({evidence[0]})" if evidence else ""


def decide(root: int, size: int, flags: dict[str, list[str]], folds: list, *, gain_stays_bound: bool = False) -> Decision:
    """The largest group for a component with ``flags`` (effective flags of its class) and the
    fold plans of the norms that normalise it. ``gain_stays_bound``: a folded RMSNorm gain must
    remain bound to the site (see :func:`symdsl.infer.canon.fold_accepts_unbound_gain`).

    >>> decide(7, 64, {"nonlinear": ["gelu in mlp.act"]}, []).level
    'permutation'
    >>> decide(3, 8, {"qk": []}, []).level, decide(3, 8, {"qk": []}, []).role
    ('invertible', 'qk')
    """
    # a query/key or value/output basis is only ever contracted: one reaching a nonlinearity is not one
    roles = [r for r in ROLE_ORDER if r in flags and not (r in ("qk", "ov") and "nonlinear" in flags)]
    role = roles[0] if roles else "experts" if "indexed" in flags else "mlp" if "nonlinear" in flags else "linear"
    d = Decision(root, size, "invertible", role)
    if "heads" in flags:
        d.level = "permutation"
        d.why.append(f"the head axis of attention{_first(flags['heads'])}: only permutations keep heads apart")
    elif "nonlinear" in flags:
        d.level = "permutation"
        d.why.append(f"reaches an elementwise nonlinearity or product{_first(flags['nonlinear'])}")
    if "isometric" in flags and LEVELS.index(d.level) > LEVELS.index("orthogonal"):
        d.level = "orthogonal"
        d.why.append(f"a sum of its squares is taken (a norm){_first(flags['isometric'])}: only isometries keep "
                     "||x||^2")
    for kind, name, cap in (("ln", "LayerNorm", "orthogonal_ones"), ("rms", "RMSNorm", "orthogonal"),
                            ("gain", "per-feature gain", "orthogonal")):
        mine = [f for f in folds if f.kind == kind]
        if not mine:
            continue
        blocked = [f for f in mine if not f.ok]
        if blocked:
            d.level = "permutation"
            d.why.append(f"reaches {len(mine)} {name}(s); the gain of {blocked[0].norm or blocked[0].node} cannot be "
                         f"folded: {blocked[0].why}; a norm with its gain commutes only with permutations")
        else:
            level = _lower(d.level, cap)
            if level != "permutation":
                d.folds.extend(f for f in mine if f.norm)
                extra = ", which subtract the mean: rotations must fix the ones vector" if kind == "ln" else ""
                d.why.append(f"read through {len(mine)} {name}(s) whose gains fold into the linear layers that read "
                             f"them{extra}")
            d.level = level
            if kind == "gain" and gain_stays_bound and any(f.norm for f in mine):
                d.level = "permutation"
                d.why.append("fold_layernorm needs the folded gain bound to the site, and a bound per-feature gain "
                             "multiplies coordinatewise: only permutations")
            if kind == "rms" and gain_stays_bound and any(f.norm for f in mine) and \
                    LEVELS.index(d.level) > LEVELS.index("orthogonal_ones"):
                d.level = "orthogonal_ones"
                d.why.append("preserve ones only because fold_layernorm needs the folded gain bound to the site: "
                             "the gain (all ones after folding) then rotates with it, and only rotations fixing "
                             "the ones vector keep it (an RMSNorm alone admits every rotation)")
    # an offset (1 + w) not taken back by a folded gain is a shift of the weight's space
    shifts = flags.get("shift", []) + flags.get("offset", [])
    if shifts and LEVELS.index(d.level) > LEVELS.index("orthogonal_ones"):
        d.level = "orthogonal_ones"
        d.why.append(f"a constant vector is added to it or it is summed over{_first(shifts)}: "
                     "only maps fixing the ones vector keep that")
    if "self_dual" in flags and d.level == "invertible":
        d.level = "orthogonal"
        d.why.append(f"a tensor reads and writes it alike{_first(flags['self_dual'])}: only maps with g^-T = g")
    if d.level == "invertible":
        if role == "qk":
            d.why.append("only contracted between queries and keys (q·k): queries take g, keys g^-T")
        elif role == "ov":
            d.why.append("a head's values reach only the output projection, linearly: values take g, "
                         "the projection's input g^-T")
        else:
            d.why.append("only read and written by linear maps")
    return d


def assign_per(decisions: dict[int, Decision], occurrences: dict[int, list[tuple]]) -> None:
    """Give a component one element per index of a permutation site when it only ever occurs
    right after that site inside composite axes (``(heads qk)``): per-head bases.

    ``occurrences[root]`` lists, for every tensor axis part that contains the component, the
    root of the factor just before it (None when it is first or alone).

    >>> ds = {1: decide(1, 4, {"heads": []}, []), 2: decide(2, 8, {"qk": []}, [])}
    >>> assign_per(ds, {1: [None, None], 2: [1, 1]})      # qk always follows heads: (heads qk)
    >>> ds[2].per
    1
    """
    for root, d in decisions.items():
        before = {prev for prev in occurrences.get(root, [])}
        if len(before) != 1:
            continue
        parent = next(iter(before))
        if parent is None or parent == root or parent not in decisions:
            continue
        if decisions[parent].level != "permutation" or decisions[parent].per is not None:
            continue
        d.per = parent
    # grouped-query attention: (kv qk') on keys, (kv qh qk) on queries. A component that follows
    # a permutation site P or a permutation per P is still one element per index of P
    for root, d in decisions.items():
        before = set(occurrences.get(root, []))
        if d.per is not None or len(before) < 2 or None in before or root in before:
            continue
        if not before <= set(decisions) or any(decisions[p].level != "permutation" for p in before):
            continue
        tops = {p if decisions[p].per is None else decisions[p].per for p in before}
        if len(tops) == 1 and tops <= before:
            d.per = tops.pop()


def assign_per_stack(decisions: dict[int, Decision], leading: dict[int, list]) -> None:
    """Give a permutation component one element per expert when every tensor it occurs in is a
    stack over a permutation of experts (axis 0: ``experts.gate_up_proj`` (E, 2f, d)): each
    expert's slice is its own layer, so its units may move on their own.

    ``leading[root]`` lists, for every tensor axis part that contains the component, the root of
    that tensor's axis 0 (None when the component is on axis 0 or axis 0 is not one component).

    >>> ds = {1: decide(1, 4, {"indexed": [], "nonlinear": []}, []), 2: decide(2, 8, {"nonlinear": []}, [])}
    >>> assign_per_stack(ds, {2: [1, 1, 1]})      # the units occur only in tensors stacked over 1
    >>> ds[2].per, ds[1].role
    (1, 'experts')
    >>> ds[2].per = None; assign_per_stack(ds, {2: [1, None]})   # also in a plain tensor: shared
    >>> ds[2].per is None
    True
    """
    for root, d in decisions.items():
        leads = set(leading.get(root, [None]))
        if d.per is not None or d.level != "permutation" or d.role == "experts" or len(leads) != 1:
            continue
        stack = leads.pop()
        parent = decisions.get(stack) if stack is not None else None
        if parent is not None and stack != root and parent.role == "experts" and parent.level == "permutation" \
                and parent.per is None:
            d.per = stack
