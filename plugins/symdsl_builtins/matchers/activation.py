"""Activation matching: align B to A from the cross-correlations of their activations on data.

Where the activations come from. The model is captured once per input signature and the
spec's symmetry types are propagated through the graph (the static check's machinery). Every
node whose output carries a site differs between A and B by that site's group element. For
each *site family* (a site, or a parent such as ``heads.i`` with the sites declared ``per`` it)
the matcher reads the family's frontier nodes: where the family is created (a linear layer's
output: q, k, v, an MLP pre-activation, an embedding) and where it is consumed (an MLP
post-activation, an attention output, a LayerNorm output read by the next layer); see
:mod:`.activation_graph`. Every axis that carries no site is flattened into samples.
Both models run the same captured program (``torch.export`` + ``torch.fx.Interpreter``, or
forward hooks on the modules that produce the nodes as a fallback), so sample i of A and of B
come from the same input position.

One pass. An activation of B at a node depends only on the sites its type carries, so the
activations of ``act(h, B)`` are those of B with h applied along the carrying axes. Everything
is therefore collected in one pass over the data (running second moments, see
:mod:`.activation_stats`), and solved sites are applied to those moments afterwards: a
parent's permutation reindexes B's head blocks before its per-head children are fitted.
Nodes that carry a second, unrelated site are skipped (their samples would mix its
coordinates) and listed in ``info["notes"]``.

Solvers (element h acts on B; A ≈ h·B is the aim; C has A's coordinates as rows):
- permutation / semi_permutation: assignment on the Pearson correlation matrix of A's and
  B's units, averaged over the site's nodes (``maximize_trace``);
- orthogonal (``preserve: ones`` included), stiefel and other self-dual matrix kinds:
  Procrustes on the raw cross second moment E[a b^T] summed over nodes (raw, not centred, so
  that means are aligned as well: it is the least-squares fit of the activations);
- a non-self-dual kind with its own ``least_squares_solve`` (rotary): its candidates from the
  same second moments, the one with the lowest least-squares loss (identity included);
- invertible and other non-self-dual kinds: least-squares regression of A's activations on
  B's, h = E[a b^T] E[b b^T]^-1, per head for a ``per`` site, from the nodes where the site
  is primal (for ``qk`` the queries, for ``ov`` the values and the attention output); with
  dual nodes only, the dual map M is regressed and h = M^-T. Where the site also has dual
  nodes (``qk``: the keys) and the primal fit is not exact, it is refined (L-BFGS) on the
  joint least-squares objective over both sides, since the primal fit alone shrinks h
  between weakly related models and h^-T then blows up the keys. ``invertible="whitened"``
  (the default; ``"regression"`` selects the fit above) instead matches second moments (h E[bb^T] h^T = E[aa^T], the closest such map): equally
  exact on a transformed A, and it never shrinks h, which keeps the merged weights sane on
  the side no activation sees (``ov``'s output projection);
- a parent of per-sites (attention heads with per-head maps): assignment on the mean
  squared canonical correlation between head a of A and head b of B, summed over the
  family's nodes. A head's centred activations span a subspace of the sample space; any
  invertible map of the head's own coordinates leaves it unchanged, so the criterion is
  exactly invariant to what the children will absorb, uses every node the family reaches
  (q, k, v and the attention output) and needs no weights.
- a permutation child of such a parent (grouped-query attention: ``qh.i``, the g query heads
  of each key/value head ``kv.i``, reordered inside their group): once the parent is assigned,
  the nodes whose head axis is (parent child) -- the query projection's output, the attention
  output -- are read as P * g sub-heads, and the child at A's position a is the assignment on
  the same subspace similarity between A's sub-head (a, j) and B's (parent[a], j') (see
  :mod:`.activation_nested`). The parent's other children (``qk.i``, ``ov.i``) are then fitted
  from the keys and values *and* from those nodes, each matched sub-head pair one more sample
  of the per-parent map.
Nodes holding squared coordinates (RMSNorm's ``x ** 2``, whose type carries the site only so
that its sum can be a norm) are not read: a rotated x does not give a rotated x ** 2.
A site that no readable node carries keeps the identity (``info["identity"]`` says why); so
does a site declared ``per`` a plain dimension, whose index activations do not name.
"""
from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Iterable, Literal, Mapping, Sequence

import torch
from pydantic import Field

from symdsl.act import act_state_dict, identity_transform
from symdsl.errors import UsageError
from symdsl.match.refine import refine_lbfgs
from symdsl.match.base import Matcher, MatchResult
from symdsl.match.solvers import maximize_trace
from symdsl.options import Device, PluginOptions
from symdsl.spec.binding import ResolvedSpec

from .activation_graph import site_families
from .activation_nested import (a_through_child, b_through_child, nested_child, reads_child, subhead_similarity,
                                through_child)
from .activation_run import ActivationRunner
from .activation_stats import Moments

F64 = torch.float64


class ActivationOptions(PluginOptions):
    """Activation matching's options (``model``, ``batches`` and ``registries`` come from the pipeline)."""

    max_samples: int = Field(65536, ge=1, description="read batches until some node has seen this many samples")
    evaluator: Literal["auto", "export", "hooks"] = Field("auto", description="how activations are read: a "
                                                          "torch.export program (auto: else module hooks)")
    invertible: Literal["regression", "whitened"] = Field("whitened", description="how invertible sites are "
                                                          "fitted to the activations")
    device: Device = Field(None, description="where to solve (default: the state dicts' device)")


class ActivationMatching(Matcher):
    """Activation matching over every site of the spec, from activations on ``batches``.

    >>> from symdsl.plugins import load
    >>> import torch
    >>> from symdsl.act import act_state_dict, random_transform
    >>> from symdsl.canon import canonicalize
    >>> from symdsl.models import build_example
    >>> from symdsl.models.build import make_inputs
    >>> from symdsl.spec import model_config, resolve
    >>> from symdsl.spec.registry import find_spec
    >>> spec = find_spec("timm-vit", load())
    >>> model = build_example(spec).double()
    >>> resolved = resolve(spec, model, registries=load())
    >>> model = canonicalize(model, resolved)
    >>> a = model.state_dict()
    >>> hidden = random_transform(resolved, seed=1)
    >>> b = act_state_dict(resolved, a, hidden)
    >>> names = {**model_config(model), **resolved.dims}
    >>> batches = [make_inputs(spec, names, seed=s) for s in range(4)]
    >>> result = ActivationMatching().match(resolved, a, b, model=model, batches=batches)
    >>> torch.equal(result.elements["mlp.0"], resolved.sites["mlp.0"].kind.inverse(hidden["mlp.0"]))
    True
    >>> result.objective[-1] < 1e-9      # relative activation distance after alignment
    True
    """

    name = "activation"
    description = ("activation matching: correlations / Procrustes / regression of A's and B's activations at the "
                   "graph nodes that carry each site")
    needs_data = True
    Options = ActivationOptions

    def match(self, resolved: ResolvedSpec, state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor],
              *, model: torch.nn.Module | None = None, batches: Iterable[Mapping] | None = None, seed: int = 0,
              progress=None, registries=None, **options) -> MatchResult:
        """Find h with act(h, B) ≈ A from activations of ``model`` (A's and B's architecture) on ``batches``.

        ``batches``: forward() keyword-argument dicts; they are read until some node has seen
        ``max_samples`` samples. ``evaluator``: ``"auto"`` (torch.export program, else module
        hooks), ``"export"`` or ``"hooks"``. ``seed`` is accepted for the matcher interface; the
        method is deterministic. Elements come back in float64 (index arrays for
        permutations) on ``device`` (default: the states' device). The objective is the
        relative activation distance over every node read, on the first batch: before, after.
        """
        settings = ActivationOptions.parse(options, "matcher 'activation'")
        max_samples, device, evaluator, invertible = (settings.max_samples, settings.device, settings.evaluator,
                                                      settings.invertible)
        if model is None or batches is None:
            raise UsageError("activation matching needs the architecture (model=) and data (batches=: an iterable of "
                             "forward() keyword-argument dicts)")
        rectangular = [s.name for s in resolved.sites.values() if s.size != s.size_in]
        if rectangular:
            raise UsageError(f"activation matching runs A and B through one architecture; sites {rectangular[:3]} "
                             "change width (use weight matching for width-heterogeneous alignment)")
        device = device if device is not None else next(iter(state_a.values())).device
        floats = [t.dtype for t in state_a.values() if t.is_floating_point()]
        traced = {} if registries is None else {"op_rules": registries.op_rules,
                                                "backends": registries.capture_backends}
        runner = ActivationRunner(resolved, model, device=device, dtype=floats[0] if floats else F64,
                                  evaluator=evaluator, **traced)
        a, b = runner.state(state_a), runner.state(state_b)
        collected = _Collector(resolved, runner, a, b)
        collected.read(batches, max_samples, progress)

        elements = identity_transform(resolved, dtype=F64, device=device)
        solver = _Solver(resolved, collected.by_family(), elements, invertible)
        families = site_families(resolved)
        for index, (root, members) in enumerate(families.items()):
            solver.family(root, members)
            if progress is not None:
                progress("activation matching: solve", index + 1, len(families))

        aligned = act_state_dict(resolved, b, elements)
        before, after = collected.distance(aligned)
        info = {"evaluator": sorted(collected.evaluators), "batches": collected.batches, "samples": collected.samples,
                "nodes": solver.nodes, "methods": solver.methods, "identity": solver.identity,
                "activation_distance": {"before": before, "after": after}, "kept_objective": after,
                "objective_means": "relative distance between A's and aligned B's activations on the first batch",
                "notes": list(dict.fromkeys(collected.notes + solver.notes))}
        return MatchResult(elements, self.name, [before, after], info)


class _Collector:
    """Streams batches through A and B and keeps the moments of every plan."""

    def __init__(self, resolved: ResolvedSpec, runner: ActivationRunner, a, b):
        self.resolved, self.runner, self.a, self.b = resolved, runner, a, b
        self.families = site_families(resolved)
        self.moments: dict[tuple[str, str], Moments] = {}
        self.notes: list[str] = []
        self.evaluators: set[str] = set()
        self.batches = 0
        self.first = None        # (program, batch, A's values, B's values) of the first batch

    @property
    def samples(self) -> int:
        return max((m.n for m in self.moments.values()), default=0)

    def read(self, batches: Iterable[Mapping], max_samples: int, progress) -> None:
        total = len(batches) if hasattr(batches, "__len__") else 0
        for raw in batches:
            batch = self.runner.batch(raw)
            program = self.runner.program(batch)
            self.evaluators.add(program.evaluator)
            self.notes.extend(program.notes)
            values_a = self.runner.run(program, self.a, batch)
            values_b = self.runner.run(program, self.b, batch)
            for plan in program.all_plans():
                if any(n not in values_a or n not in values_b for n in plan.nodes):
                    self.notes.append(f"{plan.family}: node {plan.label} produced no tensor; skipped")
                    continue
                key = (plan.family, plan.label)
                if key not in self.moments:
                    self.moments[key] = self._new(plan)
                moments = self.moments[key]
                if moments.d != plan.size:
                    self.notes.append(f"{plan.family}: node {plan.label} changed size between batches; skipped")
                    continue
                moments.update(plan.read(values_a), plan.read(values_b))
            if self.first is None:
                self.first = (program, batch, values_a, values_b)
            self.batches += 1
            if progress is not None:
                progress("activation matching: activations", self.batches, max(total, self.batches))
            if self.samples >= max_samples:
                break
        if self.batches == 0:
            raise UsageError("activation matching: batches= gave no batch")

    def _new(self, plan) -> Moments:
        parent = len(self.families[plan.family]) > 1 and plan.features[0].site == plan.family
        sites = self.resolved.sites
        blocks = parent or any(not sites[f.site].kind.self_dual for f in plan.features)
        return Moments(plan, parent=parent, blocks=blocks, device=self.runner.device)

    def by_family(self) -> dict[str, list[Moments]]:
        out: dict[str, list[Moments]] = {}
        for (family, _), moments in self.moments.items():
            if moments.n:
                out.setdefault(family, []).append(moments)
        return out

    def distance(self, aligned_b) -> tuple[float, float]:
        """Relative distance of B's, then act(h, B)'s, activations to A's on the first batch."""
        program, batch, values_a, values_b = self.first
        values_h = self.runner.run(program, aligned_b, batch)
        num_before = num_after = norm = 0.0
        for plan in program.all_plans():
            if all(n in values_a and n in values_b and n in values_h for n in plan.nodes):
                xa = plan.read(values_a).to(F64)
                num_before += float(((xa - plan.read(values_b).to(F64)) ** 2).sum())
                num_after += float(((xa - plan.read(values_h).to(F64)) ** 2).sum())
                norm += float((xa ** 2).sum())
        norm = max(norm, 1e-300)
        return math.sqrt(num_before / norm), math.sqrt(num_after / norm)


class _Solver:
    """Fills ``elements`` family by family from the collected moments, and says how."""

    def __init__(self, resolved: ResolvedSpec, moments: dict[str, list[Moments]], elements: dict, invertible: str):
        self.sites = resolved.sites
        self.invertible = invertible
        self.moments = moments
        self.elements = elements
        self.nodes: dict[str, list[str]] = {}
        self.methods: dict[str, str] = {}
        self.identity: dict[str, str] = {}
        self.notes: list[str] = []

    def _keep_identity(self, site: str, why: str) -> None:
        self.identity[site] = why
        self.methods[site] = "identity"

    def family(self, root: str, members: list[str]) -> None:
        moments = self.moments.get(root, [])
        if len(members) == 1:
            if self.sites[root].per is not None:
                self._keep_identity(root, f"declared per the dimension '{self.sites[root].per}', which activations "
                                          "do not index")
                return
            self._plain(root, [m for m in moments if [f.site for f in m.plan.features] == [root]])
            return
        self._parent(root, [m for m in moments if m.plan.features[0].site == root and m.p > 1])
        child = nested_child(self.sites, root, members[1:])
        if child is not None:                 # query heads inside a key/value head: before the maps they carry
            self._nested(child, root, [m for m in moments if reads_child(m, root, child)])
        for kid in members[1:]:
            if kid == child:
                continue
            direct = [m for m in moments if [f.site for f in m.plan.features] == [root, kid]]
            via = [] if child is None else [m for m in moments if reads_child(m, root, child)
                                            and sorted(f.site for f in m.plan.features[1:]) == sorted([child, kid])]
            self._child(kid, root, direct, via, child)

    # ------------------------------------------------------------------ one site at a time

    def _plain(self, site: str, moments: list[Moments]) -> None:
        info = self.sites[site]
        kind = info.kind
        self.nodes[site] = [m.plan.label for m in moments]
        if not moments:
            self._keep_identity(site, "no readable graph node carries it")
            return
        if not kind.matrix_based:
            c = sum(m.correlation() for m in moments) / len(moments)                  # (n, n)
            self.elements[site] = maximize_trace(kind, c, info.options).to(c.device)
            self.methods[site] = "assignment on activation correlations"
        elif kind.self_dual:
            c = sum(m.cross() for m in moments)                                        # (n, n)
            self.elements[site] = maximize_trace(kind, c, info.options).to(c.device)
            self.methods[site] = "Procrustes on the activation cross second moment"
        else:
            terms = [(m.cross().unsqueeze(0), m.bb / m.n, m.aa / m.n, m.plan.features[0].dual) for m in moments]
            g = self._regress(site, terms)
            self.elements[site] = g[0] if not info.batch else g

    def _parent(self, root: str, moments: list[Moments]) -> None:
        info = self.sites[root]
        self.nodes[root] = [m.plan.label for m in moments]
        if not moments:
            self._keep_identity(root, "no readable graph node carries it with its per-sites")
            return
        s = sum(m.subspace_similarity() for m in moments)                               # (P_A, P_B)
        self.elements[root] = maximize_trace(info.kind, s, info.options).to(s.device)
        self.methods[root] = "assignment on per-head subspace similarity (mean squared canonical correlation)"

    def _nested(self, child: str, root: str, moments: list[Moments]) -> None:
        """A permutation child per position of an index parent (query heads per key/value head)."""
        info = self.sites[child]
        self.nodes[child] = [m.plan.label for m in moments]
        if not moments:
            self._keep_identity(child, f"no readable graph node carries it next to '{root}'")
            return
        parent = self.elements[root]
        s = sum(subhead_similarity(m, parent, child) for m in moments)                 # (P, g, g)
        self.elements[child] = maximize_trace(info.kind, s, info.options).to(s.device)
        self.methods[child] = (f"assignment per {root} on sub-head subspace similarity (mean squared canonical "
                               "correlation)")

    def _child(self, kid: str, root: str, moments: list[Moments], via: Sequence[Moments] = (),
               child: str | None = None) -> None:
        """A per-``root`` site from the nodes carrying (root kid), and from ``via``: nodes carrying
        (root child kid), read through the already solved nested ``child`` (g sub-heads per head)."""
        info = self.sites[kid]
        kind = info.kind
        parent = self.elements[root]
        self.nodes[kid] = [m.plan.label for m in [*moments, *via]]
        if self.sites[root].kind.matrix_based:
            self._keep_identity(kid, f"its parent '{root}' is not an index (permutation-like) kind")
            return
        if not moments and not via:
            self._keep_identity(kid, f"no readable graph node carries it next to '{root}'")
            return
        matched = None
        if via:                                # (P, g, g): row j picks B's sub-head for A's sub-head j
            matched = self.sites[child].kind.to_matrix(self.elements[child], dtype=F64)
        if not kind.matrix_based:
            c = (sum(m.blocks(m.correlation(), parent) for m in moments)                # (P, m, m)
                 + sum(through_child(m, m.correlation(), parent, child, matched) / matched.shape[-1] for m in via))
            c = c / (len(moments) + len(via))
            self.elements[kid] = maximize_trace(kind, c, info.options).to(c.device)
            self.methods[kid] = f"assignment on activation correlations per {root}"
        elif kind.self_dual:
            c = (sum(m.blocks(m.cross(), parent) for m in moments)                      # (P, m, m)
                 + sum(through_child(m, m.cross(), parent, child, matched) for m in via))
            self.elements[kid] = maximize_trace(kind, c, info.options).to(c.device)
            self.methods[kid] = f"Procrustes on the activation cross second moment per {root}"
        else:
            terms = [(m.blocks(m.cross(), parent), m.b_blocks(parent), m.aa / m.n, m.plan.features[1].dual)
                     for m in moments]
            terms += [(through_child(m, m.cross(), parent, child, matched), b_through_child(m, parent, child, matched),
                       a_through_child(m, child), next(f.dual for f in m.plan.features if f.site == kid))
                      for m in via]
            self.elements[kid] = self._regress(kid, terms)
        if via:
            self.methods[kid] += f", with {child} applied"

    def _regress(self, site: str, terms) -> torch.Tensor:
        """Fit h (P, m, m) with h·b ≈ a on primal nodes and h^-T·b ≈ a on dual ones.

        ``terms``: per node (E[a b^T], E[b b^T], E[a a^T], dual), each (P, m, m).

        ``regression`` (default): least squares. The closed form from the primal nodes (or,
        with none, from the dual ones: h = M^-T) is exact when B is a transformed A. When the
        site has nodes on both sides (queries and keys) and that fit is not exact, it is
        refined with L-BFGS on the joint objective: the primal fit alone shrinks h where A and
        B are weakly related, and h^-T blows up on the keys.

        ``whitened``: the map that matches second moments, h E[b b^T] h^T = E[a a^T], closest
        to the data: h = S_a R S_b^-1 with S = E[x x^T]^(1/2) and R the polar factor of
        S_a E[a b^T] S_b^-1. Also exact on a transformed A, and it never shrinks: where a
        site's other side has no activations (``ov``'s output projection) least squares
        shrinks h and the merged weights see h^-T blow up, this does not.
        """
        kind, options = self.sites[site].kind, self.sites[site].options
        primal = [t for t in terms if not t[3]]
        dual = [t for t in terms if t[3]]
        sums = lambda group, i: sum(t[i] for t in group)      # noqa: E731
        eye = torch.eye(terms[0][1].shape[-1], dtype=F64, device=terms[0][1].device)

        def fit(group) -> torch.Tensor:
            if self.invertible == "whitened":                # S_a polar(S_a C S_b^-1) S_b^-1
                root_a, root_b = _sqrt(sums(group, 2)), _sqrt(sums(group, 1))
                inv_b = torch.linalg.inv(root_b)
                u, _, vh = torch.linalg.svd(root_a @ sums(group, 0) @ inv_b)
                return root_a @ u @ vh @ inv_b
            den = sums(group, 1)                              # E[a b^T] E[b b^T]^-1, a tiny ridge for rank loss
            ridge = 1e-12 * den.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-300)[..., None, None] * eye
            return torch.linalg.solve(den + ridge, sums(group, 0).mT).mT

        def loss(g: torch.Tensor) -> torch.Tensor:            # sum over nodes of E||a - h b||^2 (dual: h^-T)
            total = sum(t[2].diagonal(dim1=-2, dim2=-1).sum() for t in terms)
            for group, h in ((primal, g), (dual, torch.linalg.inv(g).mT if dual else None)):
                if group:
                    total = total + ((h @ sums(group, 1)) * h).sum() - 2 * (h * sums(group, 0)).sum()
            return total

        def usable(g: torch.Tensor | None) -> bool:
            return g is not None and bool(torch.isfinite(g).all()) and kind.contains(g, options)

        # a subgroup of GL(n) (rotary) fits itself from the same second moments
        eye_start = eye.expand_as(terms[0][1]).clone()
        own = kind.least_squares_solve(
            SimpleNamespace(ab=sums(primal, 0), bb=sums(primal, 1), aa=sums(primal, 2)) if primal else None,
            SimpleNamespace(ab=sums(dual, 0), bb=sums(dual, 1), aa=sums(dual, 2)) if dual else None,
            eye_start, options=options)
        if own is not None:
            candidates = [g for g in [*own, eye_start] if usable(g)]
            with torch.no_grad():
                scores = [float(loss(g)) for g in candidates]
            self.methods[site] = f"least-squares fit within the group ({kind.name}) of A's activations on B's"
            return candidates[min(range(len(scores)), key=scores.__getitem__)]
        fits = []                                             # primal first: the specified side
        if primal:
            fits.append(fit(primal))
        if dual:
            try:
                fits.append(torch.linalg.inv(fit(dual)).mT)
            except RuntimeError:                              # a singular dual fit
                pass
        how = "primal nodes" if primal else "dual nodes (h = M^-T)"
        if self.invertible == "whitened":
            best = next((g for g in fits if usable(g)), None)
            self.methods[site] = f"second-moment matching (whitened Procrustes) of B's activations to A's, {how}"
        else:
            candidates = [g for g in [*fits, eye.expand_as(terms[0][1]).clone()] if usable(g)]
            with torch.no_grad():
                scores = [float(loss(g)) for g in candidates]
            best = candidates[min(range(len(scores)), key=scores.__getitem__)] if candidates else None
            scale = float(sum(t[2].diagonal(dim1=-2, dim2=-1).sum() for t in terms))
            if best is not None and primal and dual and min(scores) > 1e-20 * scale:
                best, refined = refine_lbfgs(best, loss, kind, options, tolerance_change=1e-15)
                how += ", refined jointly on primal and dual nodes" if refined else ""
            self.methods[site] = f"least-squares regression of A's activations on B's, {how}"
        if best is not None:
            return best
        u, _, vh = torch.linalg.svd(sums(primal or dual, 0))                       # polar factor: orthogonal, valid
        self.notes.append(f"{site}: no regression gave a usable element (ill-conditioned activations); "
                          "used the orthogonal Procrustes fit instead")
        self.methods[site] += ", Procrustes fallback"
        return u @ vh


def _sqrt(m: torch.Tensor) -> torch.Tensor:
    """Batched square root of symmetric PSD (..., m, m), eigenvalues floored so that it stays invertible."""
    values, vectors = torch.linalg.eigh(m)
    values = values.clamp_min(1e-12 * values.amax(-1, keepdim=True).clamp_min(1e-300))
    return (vectors * values.sqrt().unsqueeze(-2)) @ vectors.mT
