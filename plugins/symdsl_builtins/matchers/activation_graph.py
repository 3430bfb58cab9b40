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
A fused axis (GPT-2's ``c_attn`` output, q | k | v) is read part by part.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from symdsl.graph.capture_types import CapturedGraph
from symdsl.graph.types import Atom, SplitAxis, Stacked, atoms_of, axis_size, is_tensor_type, sites_in
from symdsl.spec.binding import ResolvedSpec

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

    ``x`` (the node's value, of ``shape``) is narrowed to one part of a fused axis when
    ``split`` = (axis, offset, size) is set, viewed as ``factor_shape`` (every axis cut into its
    type's factors), permuted so the ``sample_factors`` come first and the ``feature_factors``
    last (parent site first), and flattened to (N, D), D = prod of the features' sizes,
    row-major in ``features``.
    """

    node: str
    family: str
    part: int | None
    split: tuple[int, int, int] | None
    shape: tuple[int, ...]
    factor_shape: tuple[int, ...]
    sample_factors: tuple[int, ...]
    feature_factors: tuple[int, ...]
    features: tuple[Feature, ...]

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
            axis, offset, size = self.split
            x = x.narrow(axis, offset, size)
        x = x.reshape(self.factor_shape).permute(*self.sample_factors, *self.feature_factors)
        return x.reshape(-1, self.size)


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
                 family: frozenset[str]) -> bool:
    node = graph.node(name)
    activation_inputs = [r.name for r in node.refs() if graph.node(roots[r.name]).op not in _LEAVES]
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


def plans_for(name: str, value, shape, members: Sequence[str]) -> tuple[list[Plan], str | None]:
    """Plans reading a site family (``members[0]`` its root) from a node's output type, or ([], why not).

    Every axis factor must be either a family site (a feature) or unbound (a sample); a fused
    axis yields one plan per part that carries the family.

    >>> t = ((Atom(2),), (Atom(8),), (Atom(4, "heads"), Atom(8, "qk")))
    >>> [p.features for p in plans_for("q", t, (2, 8, 32), ["heads", "qk"])[0]]
    [(Feature(site='heads', dual=False, size=4), Feature(site='qk', dual=False, size=8))]
    """
    family = frozenset(members)
    parent = members[0] if len(members) > 1 else None
    if not is_tensor_type(value) or isinstance(value, Stacked) or shape is None or len(value) != len(shape):
        return [], "not a single tensor of known type"
    fused = [i for i, axis in enumerate(value) if isinstance(axis, SplitAxis) and family.intersection(sites_in(axis))]
    if len(fused) > 1:
        return [], "the family sits in several fused axes"
    variants: list[tuple[tuple, tuple[int, int, int] | None, int | None]] = []
    if fused:
        axis = fused[0]
        offset = 0
        for p, part in enumerate(value[axis].parts):
            size = axis_size(part)
            if family.intersection(sites_in(part)):
                variants.append((value[:axis] + (part,) + value[axis + 1:], (axis, offset, size), p))
            offset += size
    else:
        variants.append((value, None, None))
    plans = []
    for axes, split, part in variants:
        dims = list(shape)
        if split is not None:
            dims[split[0]] = split[2]
        factors: list[Atom] = []
        for axis, dim in zip(axes, dims):
            atoms = [Atom(axis_size(axis))] if isinstance(axis, SplitAxis) and not sites_in(axis) else atoms_of(axis)
            if axis_size(tuple(atoms)) != dim:
                return [], f"its type does not match its shape {tuple(shape)}"
            factors.extend(atoms)
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
        plans.append(Plan(name, members[0], part, split, tuple(int(d) for d in shape),
                          tuple(a.size for a in factors), samples, tuple(bound),
                          tuple(Feature(factors[j].site, factors[j].dual, factors[j].size) for j in bound)))
    return plans, None


def select_plans(graph: CapturedGraph, values: Mapping,
                 resolved: ResolvedSpec) -> tuple[dict[str, list[Plan]], list[str]]:
    """For each family root: the plans of its frontier nodes; and notes on nodes passed over.

    ``values`` is ``propagate(graph, resolved).values``.
    """
    roots = _roots(graph)
    out: dict[str, list[Plan]] = {}
    notes: list[str] = []
    for root, members in site_families(resolved).items():
        family = frozenset(members)
        plans: list[Plan] = []
        for node in graph.nodes:
            if node.op in LAYOUT_OPS or node.op in _LEAVES or not _carries(values.get(node.name), family):
                continue
            if not _is_frontier(graph, values, roots, node.name, family):
                continue
            found, why = plans_for(node.name, values.get(node.name), node.shape, members)
            if why:
                notes.append(f"{root}: node {node.name} skipped: {why}")
            plans.extend(found)
        out[root] = plans
    return out, notes
