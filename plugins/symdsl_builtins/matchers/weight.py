"""Weight matching: block coordinate descent over every site of a spec.

Minimises  J(g) = sum_t ||A_t - act(g, B)_t||^2  one site at a time, the others fixed. What a
site needs is asked of its group kind, never of its name:
- a site maximises tr(g^T C) with C the correlation of A and B (other sites applied) unfolded
  along the site, through ``kind.maximize_trace`` (assignment for permutations, Procrustes on
  the complement of 1 for ``orthogonal, preserve: ones``, thin Procrustes, surjective
  assignment; a plugin kind brings its own);
- a permutation with ``per`` children (attention heads with per-head maps) is matched on
  quantities the children cannot change: for a per-head invertible map g acting as g on X and
  g^-T on Y, the circuit X^T Y is invariant, so heads are assigned on  <X_A^T Y_A, X_B^T Y_B>;
- sites of a kind with ``least_squares_fit`` (invertible: g on some tensors, g^-T on others) are
  fitted by least squares: closed forms, then L-BFGS on the objective written in Gram
  matrices (k x k per head);
- with ``permutations_only`` every site is solved as ``kind.permutation_restriction(options)``
  (orthogonal sites as permutation matrices); a kind without one keeps its site at the identity.
A site's new element is kept only if J does not increase, so J is monotone; the sweep
stops when it improves by less than ``tol`` (relative, default 1e-3: later sweeps gain less
than 0.1% of J each) or after ``max_iter`` sweeps; none runs when the anchored pass already
matched B to A at the inputs' precision (relative distance below 10 eps of their dtype).

Where the time goes, and what is done about it (GPT-2 small: 50257 x 768 embeddings, 3072 MLP
units; ``benchmarks/speed.py`` measures it):
- a tensor bound to a single norm-preserving site (the embeddings, lm_head, norm vectors)
  contributes a correlation that no other site can change: it is computed once, in float64
  from the tensors' own dtype chunk by chunk, and the tensor is never copied to float64;
- B with every site *outside* the unit being solved applied is cached per tensor and
  reused until one of those sites changes, so the dense residual rotation is applied once
  per sweep instead of once per unit and per child;
- correlations that only feed an assignment (``discrete`` kinds, head circuits) are formed
  in float32 (``precision="mixed"``, the default); errors, Procrustes and least squares stay
  float64, so exact recoveries stay exact and the reported objective is the true distance;
- invertible sites iterate on Gram matrices instead of re-multiplying the weights.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Mapping

import torch

from symdsl.act.engine import act_tensor
from symdsl.act.transform import identity_transform
from symdsl.match.base import Matcher, MatchResult
from symdsl.match.refine import refine_lbfgs
from symdsl.match.solvers import Gram, gram_gradient, gram_objective, least_squares_candidates, maximize_trace
from symdsl.match.unfold import Occurrence, occurrences, unfold

F64 = torch.float64
PRECISIONS = {"mixed": torch.float32, "float64": torch.float64}   # dtype of correlations that feed assignments
_OFF = nullcontext()
LBFGS_HISTORY = 100   # L-BFGS memory for invertible sites
_CHUNK = 1 << 22   # elements per float64 chunk when a constant correlation is formed from a lower dtype


class _Problem:
    """A and B on one device, the current elements, and cached partial products.

    ``a``/``b``: float64 copies of the tensors whose correlation changes during the descent;
    ``const``: for every other tensor (a single self-dual site on a whole axis, contracted
    over at least as many entries as the site has), its constant correlation term and norms.
    """

    def __init__(self, resolved, state_a, state_b, device, permutations_only, precision, profile):
        self.r = resolved
        self.sites = resolved.sites
        self.device = torch.device(device)
        self.profile = profile
        self.fast = PRECISIONS[precision]
        self.permutations_only = permutations_only
        self.occ = {s: occurrences(resolved, s) for s in self.sites}
        self.sites_of = {n: frozenset(b.sites()) for n, b in resolved.tensors.items()}
        self.elements = identity_transform(resolved, dtype=F64, device=self.device)
        self.is_identity = dict.fromkeys(self.sites, True)
        self.version = dict.fromkeys(self.sites, 0)   # bumped whenever a site's element changes
        self._clock = 0
        self.unit: frozenset[str] = frozenset()      # sites of the unit being solved
        self.only: set[str] | None = None    # restrict correlations to these tensors (anchor phase)
        self.invertible_steps = 0             # L-BFGS iterations refining invertible sites (0: closed forms only)
        self.cache: dict[str, float] = {}     # tensor -> ||A - act(g, B)||^2 for the current elements
        self._base: dict[str, tuple] = {}     # tensor -> (key, B with the sites outside the unit applied)
        self.a: dict[str, torch.Tensor] = {}
        self.b: dict[str, torch.Tensor] = {}
        self.const: dict[str, tuple] = {}     # tensor -> (site, term (n, n) float64, ||A||^2, ||B||^2)
        self.norm_a: dict[str, float] = {}
        for name in resolved.tensors:
            occ = self._constant_occurrence(name, state_a[name])
            if occ is not None:
                term, norm_a, norm_b = self._constant_term(occ, state_a[name].detach(), state_b[name].detach())
                self.const[name] = (self._site_at(occ), term, norm_a, norm_b)
                self.norm_a[name] = norm_a
                continue
            with self.phase("convert"):
                self.a[name] = state_a[name].detach().to(device=self.device, dtype=F64)
                self.b[name] = state_b[name].detach().to(device=self.device, dtype=F64)
                self.norm_a[name] = float((self.a[name] ** 2).sum())

    # -- instrumentation (free when no profile is given) ------------------------------------------
    def phase(self, name: str):
        return _OFF if self.profile is None else self.profile.phase(name)

    def note(self, event: str, **data) -> None:
        if self.profile is not None and hasattr(self.profile, "note"):
            self.profile.note(event, **data)

    def correlate(self, a: torch.Tensor, b: torch.Tensor, dtype=F64) -> torch.Tensor:
        """a @ b^T (batched), the matmul every site's solve reduces to, in ``dtype``."""
        with self.phase("correlate"):
            if a.dtype != dtype:
                a, b = a.to(dtype), b.to(dtype)
            self.note("matmul", a=a, b=b.mT)
            return a @ b.mT

    # -- constant tensors -------------------------------------------------------------------------
    def _site_at(self, occ: Occurrence) -> str:
        return self.r.tensors[occ.tensor].axes[occ.axis].parts[occ.part][occ.factor].site

    def _constant_occurrence(self, name: str, tensor: torch.Tensor) -> Occurrence | None:
        """The one occurrence of the only site of ``name`` if its correlation never changes (else None)."""
        if len(self.sites_of[name]) != 1:
            return None
        (site,) = self.sites_of[name]
        info = self.sites[site]
        occs = [o for o in self.occ[site] if o.tensor == name]
        if len(occs) != 1 or not (info.kind.self_dual and info.kind.square) or info.per is not None:
            return None
        if len(self.r.tensors[name].axes[occs[0].axis].parts) != 1:
            return None
        # worth keeping only if the (n, n) term is no larger than the tensor it summarises
        return occs[0] if tensor.numel() >= info.size * info.size else None

    def _constant_term(self, occ: Occurrence, a: torch.Tensor, b: torch.Tensor):
        """(A B^T unfolded along the site, ||A||^2, ||B||^2) in float64, without a float64 copy of A or B."""
        binding = self.r.tensors[occ.tensor]
        a, b = unfold(a, binding, occ), unfold(b, binding, occ)          # (n, rest), source dtype
        step = max(1, _CHUNK // max(a.shape[0], 1))
        term = None
        norms = torch.zeros(2, dtype=F64, device=self.device)      # ||A||^2, ||B||^2 (one sync at the end)
        for start in range(0, a.shape[1], step):
            with self.phase("convert"):
                ca = a[:, start:start + step].to(device=self.device, dtype=F64)
                cb = b[:, start:start + step].to(device=self.device, dtype=F64)
            part = self.correlate(ca, cb)
            term = part if term is None else term.add_(part)
            with self.phase("score"):
                norms += torch.stack([(ca * ca).sum(), (cb * cb).sum()])
        norm_a, norm_b = norms.tolist()
        return term, norm_a, norm_b

    def const_terms(self, site: str):
        """(tensor, term, ||A||^2, ||B||^2) of the constant tensors of ``site`` (respecting ``only``)."""
        for name, (s, term, norm_a, norm_b) in self.const.items():
            if s == site and (self.only is None or name in self.only):
                yield name, term, norm_a, norm_b

    def const_error(self, name: str) -> float:
        site, term, norm_a, norm_b = self.const[name]
        return norm_a + norm_b - 2.0 * float((self.matrix(site) * term).sum())

    def matrix(self, site: str) -> torch.Tensor:
        g = self.elements[site]
        return g if g.is_floating_point() else self.sites[site].kind.to_matrix(g, dtype=F64).to(g.device)

    # -- elements ---------------------------------------------------------------------------------
    def set(self, site: str, g: torch.Tensor, identity: bool = False) -> None:
        """Make ``g`` the element of ``site``; cached products that used the old one become stale."""
        old = self.elements[site]
        if (identity == self.is_identity[site] and old.shape == g.shape and old.dtype == g.dtype
                and torch.equal(old, g)):
            return
        self.elements[site] = g
        self.is_identity[site] = identity
        self._clock += 1
        self.version[site] = self._clock

    def active(self, sites) -> dict:
        """The elements of ``sites`` that do something (a square kind's identity is skipped)."""
        return {s: self.elements[s] for s in sites
                if not (self.is_identity[s] and self.sites[s].kind.square)}

    # -- moving B ---------------------------------------------------------------------------------
    def touched(self, sites) -> list[str]:
        return sorted({o.tensor for s in sites for o in self.occ[s]})

    def base(self, name: str) -> torch.Tensor:
        """B[name] with the current elements of every site outside the unit applied (cached)."""
        inside = self.unit & self.sites_of[name]
        outside = sorted(self.sites_of[name] - inside)
        key = (inside, tuple(self.version[s] for s in outside))
        hit = self._base.get(name)
        if hit is not None and hit[0] == key:
            return hit[1]
        elements = self.active(outside)
        x = self.b[name]
        if elements:
            with self.phase("apply"):
                x = act_tensor(x, self.r.tensors[name], elements, self.sites)
        self._base[name] = (key, x)
        return x

    def moved(self, name: str, exclude=frozenset()) -> torch.Tensor:
        """B[name] with every current element applied except those of ``exclude``.

        Sites outside the unit come from the cached :meth:`base`; the unit's own (cheap:
        permutations and per-head maps, or one site) are applied on top. A unit holds a parent
        together with its ``per`` children, so the order the engine needs (parent first) holds.
        """
        exclude = frozenset(exclude)
        if not exclude <= self.unit:       # not a unit's question: move from scratch
            elements = self.active(self.sites_of[name] - exclude)
            with self.phase("apply"):
                return act_tensor(self.b[name], self.r.tensors[name], elements, self.sites)
        x = self.base(name)
        elements = self.active((self.unit - exclude) & self.sites_of[name])
        if elements:
            with self.phase("apply"):
                x = act_tensor(x, self.r.tensors[name], elements, self.sites)
        return x

    def errors(self, names) -> dict[str, float]:
        """||A_t - act(g, B)_t||^2 per tensor for the current elements."""
        out = {}
        for n in names:
            if n in self.const:
                out[n] = self.const_error(n)
                continue
            x = self.moved(n)
            with self.phase("score"):
                out[n] = float(((self.a[n] - x) ** 2).sum())
        return out

    def unfolded_pairs(self, site: str, exclude: set[str]):
        """(occurrence, A unfolded, B unfolded with every site but ``exclude`` applied); constant tensors excluded."""
        parent = self.sites[site].per
        by_tensor: dict[str, list[Occurrence]] = {}
        for o in self.occ[site]:
            by_tensor.setdefault(o.tensor, []).append(o)
        for name, occs in by_tensor.items():
            if name in self.const or (self.only is not None and name not in self.only):
                continue
            binding = self.r.tensors[name]
            # occurrences in different parts of one fused axis (q | k of c_attn) touch disjoint slices:
            # each is linear in g on its own
            disjoint = len({(o.axis, o.part) for o in occs}) == len(occs) and len({o.axis for o in occs}) == 1
            if len(occs) == 1 or disjoint:
                moved_b = self.moved(name, exclude)
                for o in occs:
                    yield o, unfold(self.a[name], binding, o, parent), unfold(moved_b, binding, o, parent)
                continue
            kind = self.sites[site].kind
            if not kind.self_dual or parent is not None:
                continue   # several occurrences of a non-self-dual site in one tensor: not linear in g; skip it
            moved_b = self.moved(name, set(exclude) - {site})
            undo = kind.inverse(self.elements[site])
            for o in occs:  # linearise: current g on the other occurrences, undone on this one
                with self.phase("apply"):
                    undone = kind.apply(undo, unfold(moved_b, binding, o), 0)
                yield o, unfold(self.a[name], binding, o), undone

    def solving_kind(self, site: str):
        """The kind ``site`` is solved as: its own, or with ``permutations_only`` its kind's
        permutation restriction (None: the site keeps its current element)."""
        info = self.sites[site]
        return info.kind.permutation_restriction(info.options) if self.permutations_only else info.kind

    def solving_options(self, site: str, kind) -> dict:
        """The site's options for its own kind; a restriction is used without options."""
        return self.sites[site].options if kind is self.sites[site].kind else {}

    def solve(self, kind, c: torch.Tensor, options) -> torch.Tensor:
        """argmax_g tr(g^T C) for ``kind``, timed as an assignment or an SVD; matrices in float64."""
        with self.phase("assign" if kind.discrete else "svd"):
            self.note("maximize_trace", kind=kind, c=c, options=options)
            g = maximize_trace(kind, c, options).to(c.device)
        # a discrete kind solved from a float32 correlation returns float32 matrices
        return g.to(F64) if g.is_floating_point() else g


class WeightMatching(Matcher):
    """Weight matching over every site of the spec (block coordinate descent)."""

    name = "weight"
    description = "weight matching: assignment / Procrustes / least squares per site, block coordinate descent"

    def match(self, resolved, state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor], *,
              seed: int = 0, progress=None, max_iter: int = 30, tol: float = 1e-3, permutations_only: bool = False,
              invertible_steps: int = 50, device=None, precision: str = "mixed", profile=None,
              **options) -> MatchResult:
        """Align B to A. ``precision``: ``"mixed"`` (float32 correlations for assignments) or ``"float64"``.

        ``profile``: an optional timer with ``phase(name)`` returning a context manager (phases:
        correlate, assign, svd, invertible, apply, score, convert) and optionally
        ``note(event, **tensors)`` (events ``matmul`` with a, b; ``maximize_trace`` with kind, c,
        options; ``invertible`` with primal, dual Grams; ``lbfgs`` with start, primal, dual,
        steps, kind), so that a benchmark can time the work and replay it alone.
        """
        from symdsl.errors import UsageError

        if options:
            raise UsageError(f"weight matching has no option(s) {sorted(options)}; options: max_iter, tol, "
                             "permutations_only, invertible_steps, device, precision, profile")
        if precision not in PRECISIONS:
            raise UsageError(f"weight matching option precision={precision!r}: use one of {sorted(PRECISIONS)}")
        device = device or next(iter(state_a.values())).device
        problem = _Problem(resolved, state_a, state_b, device, permutations_only, precision, profile)
        problem.invertible_steps = int(invertible_steps)
        everything = list(resolved.tensors)
        # per-tensor errors for the current elements: a unit re-measures only its own tensors
        problem.cache = problem.errors(everything)
        history = [sum(problem.cache.values())]
        units = _units(resolved)
        _anchored_start(problem, units)
        history.append(sum(problem.cache.values()))
        # B already matches A to the inputs' own precision (a recovery): no sweep can find more
        eps = max(torch.finfo(s[n].dtype).eps for s in (state_a, state_b) for n in resolved.tensors
                  if s[n].is_floating_point())
        exact = (10 * eps) ** 2 * sum(problem.norm_a.values())
        for sweep in range(max_iter if history[-1] > exact else 0):
            for index, unit in enumerate(units):
                _update(problem, unit)
                if progress is not None:
                    progress("weight matching", sweep * len(units) + index + 1, max_iter * len(units))
            history.append(sum(problem.cache.values()))
            if history[-2] - history[-1] <= tol * max(history[-2], 1e-300):
                break
        return MatchResult(problem.elements, self.name, history,
                           {"sweeps": len(history) - 1, "permutations_only": permutations_only,
                            "relative_distance": (max(history[-1], 0.0) / max(sum(problem.norm_a.values()), 1e-300)) ** 0.5})


def _units(resolved) -> list[tuple[str, list[str]]]:
    """Update order: plain sites first, then each parent with its per-children (heads, qk, ov)."""
    children: dict[str, list[str]] = {}
    for s in resolved.sites.values():
        if s.per in resolved.sites:
            children.setdefault(s.per, []).append(s.name)
    plain = [(s, []) for s in resolved.sites if resolved.sites[s].per not in resolved.sites and s not in children]
    dim_per = [(s, []) for s in resolved.sites if resolved.sites[s].per is not None and resolved.sites[s].per not in resolved.sites]
    plain = [u for u in plain if u not in dim_per]
    return plain + [(p, kids) for p, kids in children.items()] + dim_per


def _anchored_start(problem: _Problem, units) -> None:
    """First pass: solve each unit only from tensors whose other sites are already solved.

    With every other site still at the identity, a tensor that also carries (say) a head
    permutation only adds noise to the residual rotation's correlation. Solving from anchors
    first (embeddings and norm vectors fix the residual stream; then layer by layer) gives
    block coordinate descent a start near the right basin; in a recovery problem it is exact.
    """
    solved: set[str] = set()
    pending = list(units)
    while pending:
        progressed = False
        for unit in list(pending):
            sites = {unit[0], *unit[1]}
            anchors = {t for t in problem.touched(sites)
                       if problem.r.tensors[t].sites() - sites <= solved}
            if not anchors:
                continue
            problem.only = anchors
            try:
                _update(problem, unit)
            finally:
                problem.only = None
            solved |= sites
            pending.remove(unit)
            progressed = True
        if not progressed:
            break


def _update(problem: _Problem, unit) -> None:
    parent, kids = unit
    sites = [parent, *kids]
    problem.unit = frozenset(sites)
    names = problem.touched(sites)
    before = sum(problem.cache[n] for n in names)
    saved = {s: (problem.elements[s], problem.is_identity[s]) for s in sites}
    scored: dict[str, float] = {}
    if kids:
        _solve_parent(problem, parent, kids)
        for kid in kids:
            _solve_site(problem, kid)
    else:
        scored = _solve_site(problem, parent)
    after = {**scored, **problem.errors([n for n in names if n not in scored])}
    if sum(after.values()) > before * (1 + 1e-12) + 1e-300:
        for s, (g, identity) in saved.items():   # never let J go up (the cached errors still hold)
            problem.set(s, g, identity)
    else:
        problem.cache.update(after)
    problem.unit = frozenset()


def _solve_site(problem: _Problem, site: str) -> dict[str, float]:
    """Update one site; return the new errors of the tensors it could score without re-applying g.

    For a dense norm-preserving site (orthogonal) occurring once on a whole axis of a tensor,
    ||A - g B'||^2 = ||A||^2 + ||B'||^2 - 2 tr(g^T a b^T)  from the unfolded pair already at hand,
    so the caller need not move that tensor again (the residual rotation touches every tensor).
    Permutations are re-applied instead (an index gather, cheap), which keeps their float32
    correlations out of the bookkeeping.
    """
    info = problem.sites[site]
    kind = info.kind
    solving = problem.solving_kind(site)
    if solving is None:
        return {}
    if solving.least_squares_fit:
        _solve_invertible(problem, site)
        return {}
    dtype = problem.fast if solving.discrete else F64
    # ||A - g B||^2 = ||A||^2 + ||B||^2 - 2 tr(g^T A B^T) needs ||g B|| = ||B||
    score_from_trace = kind.matrix_based and kind.isometric
    c, scorable = None, {}
    for name, term, norm_a, norm_b in problem.const_terms(site):
        c = term if c is None else c + term
        if score_from_trace:
            scorable[name] = (norm_a + norm_b, term)
    counts: dict[str, int] = {}
    for occ in problem.occ[site]:
        counts[occ.tensor] = counts.get(occ.tensor, 0) + 1
    for occ, a, b in problem.unfolded_pairs(site, {site}):
        term = problem.correlate(a, b, dtype)
        c = term if c is None else c + term
        whole_axis = len(problem.r.tensors[occ.tensor].axes[occ.axis].parts) == 1
        if score_from_trace and kind.square and counts[occ.tensor] == 1 and whole_axis and info.per is None:
            with problem.phase("score"):
                scorable[occ.tensor] = (problem.norm_a[occ.tensor] + float((b * b).sum()), term)
    if c is None:
        return {}
    problem.set(site, problem.solve(solving, c, problem.solving_options(site, solving)))
    if not scorable:
        return {}
    with problem.phase("score"):
        matrix = problem.matrix(site)
        return {name: norms - 2.0 * float((matrix * term).sum()) for name, (norms, term) in scorable.items()}


def _circuits(problem: _Problem, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(P, P, k, k): entry [p, q] is a[p] b[q]^T for a, b (P, k, M), as one matmul in the fast dtype."""
    p, k, m = a.shape
    flat = problem.correlate(a.reshape(p * k, m), b.reshape(p * k, m), problem.fast)   # (P k, P k)
    return flat.reshape(p, k, p, k).permute(0, 2, 1, 3)


def _solve_parent(problem: _Problem, parent: str, kids: list[str]) -> None:
    """Assign the parent (heads) on circuits its children cannot change, then reset the children."""
    exclude = {parent, *kids}
    n = problem.sites[parent].size
    device = problem.device
    cost = torch.zeros(n, n, dtype=problem.fast, device=device)
    for kid in kids:
        solving = problem.solving_kind(kid)
        # a child kept at the identity acts alike on both sides: its dual occurrences count as primal
        kind_self_dual = solving is None or solving.self_dual
        primal_a, primal_b, dual_a, dual_b = [], [], [], []
        for occ, a, b in problem.unfolded_pairs(kid, exclude):
            if occ.dual and not kind_self_dual:
                dual_a.append(a), dual_b.append(b)
            else:
                primal_a.append(a), primal_b.append(b)
        if not primal_a:
            continue
        xa, xb = torch.cat(primal_a, -1), torch.cat(primal_b, -1)                     # (P, k, Mp)
        ya, yb = (torch.cat(dual_a, -1), torch.cat(dual_b, -1)) if dual_a else (xa, xb)   # (P, k, Md)
        g1 = _circuits(problem, xa, xb)                                                # X_A[a] X_B[b]^T
        g2 = g1 if ya is xa else _circuits(problem, ya, yb)
        with problem.phase("correlate"):
            cost += (g1 * g2).sum((-1, -2))                                            # <X_A^T Y_A, X_B^T Y_B>
    for occ in problem.occ[parent]:   # tensors where the parent appears without its children
        binding = problem.r.tensors[occ.tensor]
        if any(f.site in kids for ax in binding.axes for p in ax.parts for f in p):
            continue
        if occ.tensor in problem.const:
            cost += problem.const[occ.tensor][1].to(cost.dtype)
            continue
        moved = problem.moved(occ.tensor, exclude)
        cost += problem.correlate(unfold(problem.a[occ.tensor], binding, occ), unfold(moved, binding, occ), problem.fast)
    solving = problem.solving_kind(parent)
    if solving is not None:
        problem.set(parent, problem.solve(solving, cost, problem.solving_options(parent, solving)).to(device))
    for kid in kids:
        site = problem.sites[kid]
        problem.set(kid, site.kind.identity(site.size, site.size_in, site.batch, options=site.options,
                                            dtype=F64, device=device), identity=True)


def _solve_invertible(problem: _Problem, site: str) -> None:
    """min_g sum_primal ||A - g B||^2 + sum_dual ||A - g^-T B||^2 (batched over ``per``)."""
    primal, dual = [], []
    for occ, a, b in problem.unfolded_pairs(site, {site}):
        (dual if occ.dual else primal).append((a, b))
    if not primal and not dual:
        return
    current = problem.elements[site]
    kind = problem.sites[site].kind
    with problem.phase("correlate"):
        for a, b in primal + dual:
            problem.note("matmul", a=a, b=b.mT)
            problem.note("matmul", a=b, b=b.mT)
        gram_p = Gram.of(primal, with_aa=False) if primal else None
        for a, _ in dual:
            problem.note("matmul", a=a, b=a.mT)
        gram_d = Gram.of(dual) if dual else None

    def exact(g):   # on the pairs themselves: the Gram form cannot resolve a nearly exact fit
        total = 0.0
        for a, b in primal:
            total = total + ((a - g @ b) ** 2).sum()
        if dual:
            inverse, singular = torch.linalg.inv_ex(g)
            if bool((singular != 0).any()):
                return float("inf")   # a singular candidate (e.g. the closed form on a lifted, rank-deficient head)
            inv_t = inverse.mT
            for a, b in dual:
                total = total + ((a - inv_t @ b) ** 2).sum()
        return float(total)

    with problem.phase("invertible"):
        problem.note("invertible", primal=gram_p, dual=gram_d)
        candidates = [current, *least_squares_candidates(gram_p, gram_d)]
    with problem.phase("score"):
        scores = [exact(c) if torch.isfinite(c).all() else float("inf") for c in candidates]
    index = min(range(len(scores)), key=scores.__getitem__)
    best, best_score = candidates[index], scores[index]
    scale = float(sum(g.norm for g in (gram_p, gram_d) if g is not None))
    if best_score <= 1e-24 * scale or not (primal and dual) or problem.invertible_steps <= 0:
        # exact already, or one-sided (then the closed form is the least-squares optimum)
        if kind.contains(best):
            problem.set(site, best.detach())
        return
    with problem.phase("invertible"):
        problem.note("lbfgs", start=best, primal=gram_p, dual=gram_d, steps=problem.invertible_steps, kind=kind)
        refined, improved = refine_lbfgs(best, gram_objective(gram_p, gram_d), kind, max_iter=problem.invertible_steps,
                                         history_size=LBFGS_HISTORY, gradient=gram_gradient(gram_p, gram_d))
    if improved:
        with problem.phase("score"):
            if exact(refined) < best_score:
                best = refined
    if kind.contains(best):
        problem.set(site, best.detach())
