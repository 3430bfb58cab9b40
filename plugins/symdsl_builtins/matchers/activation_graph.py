"""Where activation matching looks: graph nodes whose output carries a site, and how to read them.

The static propagation (:func:`symdsl.graph.propagate.propagate`) gives every captured node the
symmetry type of its output: per axis, the sites (and variances) of its factors. A node whose
output carries a site is a place where model A's and model B's activations differ by that
site's group element, so their cross-correlations there determine it.

Sites are handled in *families*: a site, or a parent site together with the sites declared
``per`` it (``heads.i`` with ``qk.i`` and ``ov.i``), because a per-head activation can only be
read with its head index. For a family, the matcher reads its *frontier* nodes:

* creation nodes: no activation input carries the family (parameters do not count), e.g. the
  output of the linear layer that writes the family (an MLP's pre-activation, q/k/v);
* consumption nodes: some reader, looking through pure layout ops, no longer carries the
  family (an MLP's post-activation read by its output projection, the attention output read
  by the output projection, a LayerNorm output read by the next block).

Intermediate elementwise steps (the dozen nodes of a tanh-GELU) and residual sums are skipped:
they add no new coordinates, only weight. Layout ops (view, transpose, split, getitem, ...)
are never read themselves; the node they come from is, so no activation is counted twice.
A fused axis (GPT-2's ``c_attn`` output, q | k | v) is read part by part, and so is a split
nested in a head factor (GPT-NeoX's ``(heads [qk | qkp | qk' | qkp' | ov])``, Phi-3's
``[(kv g [qk | qkp]) | ...]``): every *leaf part* of the axis (one choice of part in every split,
at any depth) is a set of positions of the axis, gathered with ``index_select`` and read with
its own factors. So q's rotary part and its pass-through part are read at the projection's
output, where they still are one tensor, before RoPE (which their sites commute with).

Per-sites of gathered stacked weights (a mixture of experts' units, ``per`` the expert site)
are read where they carry no expert factor; :mod:`.activation_gather` places each row under
the expert it was routed to.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from symdsl.graph.capture_types import CapturedGraph
from symdsl.graph.types import Atom, SplitAxis, Stacked, axis_size, is_tensor_type, sites_in
from symdsl.spec.binding import ResolvedSpec

from .activation_gather import find_gather, rows_follow, scatter_rows, weight_gathers

# Ops that only move data around: their output is (a view or subset of) their first input.
LAYOUT_OPS = frozenset({
    "view", "reshape", "_unsafe_view", "flatten", "unflatten", "transpose", "t", "numpy_T", "mT", "permute",
    "identity", "contiguous", "clone", "alias", "to", "detach", "lift_fresh_copy", "type_as", "unsqueeze",
    "squeeze", "expand", "split", "split_with_sizes", "chunk", "unbind", "getitem", "select", "slice",
})
_LEAVES = frozenset({"param", "input", "constant", "placeholder", "get_attr", "output", "assert"})


@dataclass(frozen=True)
class Feature:
    """One site factor of an activation's feature axis."""

    site: str
    dual: bool
    size: int


@dataclass(frozen=True)
class Plan:
    """How to turn one node's output into a (samples, features) matrix for one site family.

    ``x`` (the node's value, of ``shape``) is narrowed to one leaf part of a fused or nested
    axis when ``split`` = (axis, positions) is set (the part's entries along ``axis``, row-major
    in its factors), viewed as ``factor_shape`` (every axis cut into its type's factors),
    permuted so the ``sample_factors`` come first and the ``feature_factors`` last (parent
    site first), and flattened to (N, D), D = prod of the features' sizes, row-major in
    ``features``. ``gather`` = (index node, parent size) marks a node of gathered stacked
    weights: ``features`` then starts with the parent, which the node itself does not hold
    (:meth:`read` scatters each row into its parent's block, see :mod:`.activation_gather`).
    """

    node: str
    family: str
    part: int | None
    split: tuple[int, tuple[int, ...]] | None
    shape: tuple[int, ...]
    factor_shape: tuple[int, ...]
    sample_factors: tuple[int, ...]
    feature_factors: tuple[int, ...]
    features: tuple[Feature, ...]
    gather: tuple[str, int] | None = None

    @property
    def nodes(self) -> tuple[str, ...]:
        """The graph nodes whose values :meth:`read` needs."""
        return (self.node,) if self.gather is None else (self.node, self.gather[0])

    @property
    def label(self) -> str:
        return self.node if self.part is None else f"{self.node}[{self.part}]"

    @property
    def size(self) -> int:
        n = 1
        for f in self.features:
            n *= f.size
        return n

    def extract(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D): every non-feature factor flattened into samples.

        >>> plan = Plan("h", "mlp", None, None, (2, 3, 4), (2, 3, 4), (0, 1), (2,), (Feature("mlp", False, 4),))
        >>> plan.extract(torch.zeros(2, 3, 4)).shape
        torch.Size([6, 4])
        """
        x = x.reshape(self.shape)      # a module's output may be a row-major view of the node
        if self.split is not None:
            axis, positions = self.split
            x = x.index_select(axis, torch.tensor(positions, dtype=torch.long, device=x.device))
        x = x.reshape(self.factor_shape).permute(*self.sample_factors, *self.feature_factors)
        return x.reshape(-1, math.prod(self.factor_shape[j] for j in self.feature_factors))

    def read(self, values: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(N, D) from the evaluated nodes (``values``: node name -> tensor)."""
        x = self.extract(values[self.node])
        if self.gather is None:
            return x
        return scatter_rows(x, values[self.gather[0]], self.gather[1])


def site_families(resolved: ResolvedSpec) -> dict[str, list[str]]:
    """Family root -> [root, children...]: a site with the sites declared ``per`` it.

    A site ``per`` a plain dimension (not a site) is a family of its own.

    >>> from symdsl.plugins import load
    >>> from symdsl.spec.registry import find_spec
    >>> from symdsl.spec import resolve
    >>> from symdsl.models import build_example
    >>> spec = find_spec("hf-gpt2", load())
    >>> site_families(resolve(spec, build_example(spec), registries=load()))["heads.0"]
    ['heads.0', 'qk.0', 'ov.0']
    """
    out: dict[str, list[str]] = {}
    for name, site in resolved.sites.items():
        if site.per in resolved.sites:
            continue
        out.setdefault(name, [name])
    for name, site in resolved.sites.items():
        if site.per in resolved.sites:
            out.setdefault(site.per, [site.per]).append(name)
    return out


def _roots(graph: CapturedGraph) -> dict[str, str]:
    """Node -> the node whose data it shows (layout ops look through to their first input)."""
    root: dict[str, str] = {}
    for node in graph.nodes:
        refs = node.refs()
        root[node.name] = root.get(refs[0].name, refs[0].name) if node.op in LAYOUT_OPS and refs else node.name
    return root


def _carries(value, family: frozenset[str]) -> bool:
    try:
        return bool(family.intersection(sites_in(value)))
    except TypeError:   # a value the type system does not model (a violation marker)
        return False


def _is_frontier(graph: CapturedGraph, values: Mapping, roots: Mapping[str, str], name: str,
                 family: frozenset[str], weights: frozenset[str] = frozenset()) -> bool:
    node = graph.node(name)
    # parameters, and parameters gathered per row (a mixture's experts), are not activations
    activation_inputs = [r.name for r in node.refs()
                         if graph.node(roots[r.name]).op not in _LEAVES and roots[r.name] not in weights]
    if not any(_carries(values.get(r), family) for r in activation_inputs):
        return True                                     # creation: the family starts here
    stack, seen = [name], {name}
    while stack:                                        # consumption: a reader drops the family
        for user in graph.users(stack.pop()):
            if user.name in seen:
                continue
            seen.add(user.name)
            if user.op == "output":
                return True
            if user.op in LAYOUT_OPS:
                stack.append(user.name)
            elif not _carries(values.get(user.name), family):
                return True
    return False


def _leaves(axis) -> list[tuple[list[Atom], torch.Tensor]]:
    """The leaf parts of an axis type: (factors, positions along the axis, row-major in them).

    A split (at any depth, nested in a composite or not) contributes one leaf per part; a
    composite combines its items' leaves row-major. An axis (or item) that carries no site is
    one unbound factor, however it is split.

    >>> t = (Atom(2, "heads"), SplitAxis(((Atom(2, "qk"),), (Atom(1, "qkp"),))))   # (heads [qk | qkp])
    >>> [([str(a) for a in atoms], pos.tolist()) for atoms, pos in _leaves(t)]
    [(['heads', 'qk'], [0, 1, 3, 4]), (['heads', 'qkp'], [2, 5])]
    """
    if not sites_in(axis):
        size = axis_size(axis) if not isinstance(axis, Atom) else axis.size
        return [([Atom(size)], torch.arange(size))]
    if isinstance(axis, Atom):
        return [([axis], torch.arange(axis.size))]
    if isinstance(axis, SplitAxis):
        out, offset = [], 0
        for part in axis.parts:
            out += [(atoms, positions + offset) for atoms, positions in _leaves(part)]
            offset += axis_size(part)
        return out
    combined: list[tuple[list[Atom], torch.Tensor]] = [([], torch.zeros(1, dtype=torch.long))]
    for item in axis:                                  # row-major: position = outer * size(item) + inner
        size = item.size if isinstance(item, Atom) else axis_size(item)
        combined = [(atoms + more, (positions[:, None] * size + inner[None, :]).reshape(-1))
                    for atoms, positions in combined for more, inner in _leaves(item)]
    return combined


def plans_for(name: str, value, shape, members: Sequence[str]) -> tuple[list[Plan], str | None]:
    """Plans reading a site family (``members[0]`` its root) from a node's output type, or ([], why not).

    Every axis factor must be either a family site (a feature) or unbound (a sample); an axis
    with splits (fused, or nested in a composite) yields one plan per leaf part that carries
    the family.

    >>> t = ((Atom(2),), (Atom(8),), (Atom(4, "heads"), Atom(8, "qk")))
    >>> [p.features for p in plans_for("q", t, (2, 8, 32), ["heads", "qk"])[0]]
    [(Feature(site='heads', dual=False, size=4), Feature(site='qk', dual=False, size=8))]
    >>> nested = ((Atom(8),), (Atom(4, "heads"), SplitAxis(((Atom(2, "qk"),), (Atom(6, "qkp"),)))))
    >>> [[str(f.site) for f in p.features] for p in plans_for("q", nested, (8, 32), ["heads", "qk", "qkp"])[0]]
    [['heads', 'qk'], ['heads', 'qkp']]
    """
    family = frozenset(members)
    parent = members[0] if len(members) > 1 else None
    if not is_tensor_type(value) or isinstance(value, Stacked) or shape is None or len(value) != len(shape):
        return [], "not a single tensor of known type"
    if any(axis_size(axis) != dim for axis, dim in zip(value, shape)):
        return [], f"its type does not match its shape {tuple(shape)}"
    leaves = [_leaves(axis) for axis in value]                 # one leaf per axis without a split
    split = [i for i, found in enumerate(leaves) if len(found) > 1]
    outside = sorted({site for i in split for site in sites_in(value[i])} - family)
    if outside:
        return [], f"it also carries {', '.join(outside)} (samples would mix their coordinates)"
    if len(split) > 1:
        return [], "the family sits in several fused axes"
    single = [found[0][0] for found in leaves]
    variants: list[tuple[list[list[Atom]], tuple[int, tuple[int, ...]] | None, int | None]] = []
    if split:
        axis = split[0]
        for p, (atoms, positions) in enumerate(leaves[axis]):
            if family.intersection(a.site for a in atoms):
                variants.append((single[:axis] + [atoms] + single[axis + 1:],
                                 (axis, tuple(int(i) for i in positions)), p))
    else:
        variants.append((single, None, None))
    plans = []
    for axes, cut, part in variants:
        factors: list[Atom] = [atom for atoms in axes for atom in atoms]
        bound = [j for j, atom in enumerate(factors) if atom.site]
        if any(factors[j].squared for j in bound):
            # x ** 2 of a rotated x is not the rotated x ** 2: only its sum (a norm) is kept, so
            # the coordinates differ between A and B by no group element
            return [], "it holds squared coordinates (only their sum is invariant)"
        others = sorted({factors[j].site for j in bound} - family)
        if others:
            return [], f"it also carries {', '.join(others)} (samples would mix their coordinates)"
        if len({factors[j].site for j in bound}) != len(bound):
            return [], "a family site appears twice in it"
        bound.sort(key=lambda j: factors[j].site != parent)     # the parent's factor first
        samples = tuple(j for j in range(len(factors)) if not factors[j].site)
        plans.append(Plan(name, members[0], part, cut, tuple(int(d) for d in shape),
                          tuple(a.size for a in factors), samples, tuple(bound),
                          tuple(Feature(factors[j].site, factors[j].dual, factors[j].size) for j in bound)))
    return plans, None


def select_plans(graph: CapturedGraph, values: Mapping,
                 resolved: ResolvedSpec) -> tuple[dict[str, list[Plan]], list[str]]:
    """For each family root: the plans of its frontier nodes; and notes on nodes passed over.

    ``values`` is ``propagate(graph, resolved).values``.
    """
    roots = _roots(graph)
    weights = frozenset(weight_gathers(graph, roots, _LEAVES))
    out: dict[str, list[Plan]] = {}
    notes: list[str] = []
    for root, members in site_families(resolved).items():
        family = frozenset(members)
        plans: list[Plan] = []
        for node in graph.nodes:
            if (node.op in LAYOUT_OPS or node.op in _LEAVES or node.name in weights
                    or not _carries(values.get(node.name), family)):
                continue
            if not _is_frontier(graph, values, roots, node.name, family, weights):
                continue
            found, why = plans_for(node.name, values.get(node.name), node.shape, members)
            if not why and found and len(members) > 1 and found[0].features[0].site != root:
                found, why = _gathered(graph, values, found, root, resolved)
            if why:
                notes.append(f"{root}: node {node.name} skipped: {why}")
            plans.extend(found)
        out[root] = plans
    return out, notes


def _gathered(graph: CapturedGraph, values: Mapping, plans: list[Plan], root: str,
              resolved: ResolvedSpec) -> tuple[list[Plan], str | None]:
    """Plans of a node that carries sites ``per`` ``root`` without ``root`` itself: read through
    the gather that selected the parent per row (:mod:`.activation_gather`), or ([], why not)."""
    sites = resolved.sites
    if any(sites[f.site].per != root for p in plans for f in p.features):
        return [], f"it carries sites of the family without '{root}' and not per it"
    ids = find_gather(graph, values, plans[0].node, root)
    if ids is None:
        return [], f"it carries per-sites of '{root}' without it, and no gather of '{root}' leads to it"
    shape = graph.node(ids.name).shape
    if not isinstance(shape, tuple) or not all(isinstance(d, int) for d in shape):
        return [], f"the index tensor {ids.name} has no single shape"
    if not all(rows_follow(shape, p.factor_shape, p.sample_factors) for p in plans):
        return [], f"its leading axes are not the rows gathered by {ids.name}"
    parent = Feature(root, False, sites[root].size)
    return [Plan(p.node, p.family, p.part, p.split, p.shape, p.factor_shape, p.sample_factors, p.feature_factors,
                 (parent, *p.features), (ids.name, sites[root].size)) for p in plans], None
