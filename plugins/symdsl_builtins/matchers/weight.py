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
  while the head order holds, the children start the next fit from their last elements (a
  candidate beside the closed forms), else from the identity (they belonged to other heads);
- sites of a kind with ``least_squares_fit`` (invertible: g on some tensors, g^-T on others) are
  fitted by least squares: closed forms, then L-BFGS (default) or Newton (``invertible_solver``,
  symdsl.match.gauss_newton) on the objective written in Gram matrices (k x k per head); a kind that is a subgroup of GL(n) answers
  ``kind.least_squares_solve`` from the same Gram matrices instead (rotary: one complex scalar
  per RoPE frequency pair);
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
- invertible sites iterate on Gram matrices instead of re-multiplying the weights;
- a site's correlation term of a tensor whose other sites are discrete and have not changed
  (the residual rotation's terms of the MLP matrices once the MLP permutations settle) is kept
  across sweeps (symdsl.match.term_cache) instead of being formed again from the same operands.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Mapping

import torch
from pydantic import Field

from symdsl.match.base import Matcher, MatchResult, report
from symdsl.match.gauss_newton import refine_gauss_newton
from symdsl.match.refine import refine_lbfgs
from symdsl.match.solvers import Gram, gram_gradient, gram_objective, least_squares_candidates
from symdsl.match.unfold import unfold
from symdsl.options import Device, PluginOptions, shown_as
from symdsl.threads import choose_threads, torch_threads

from .weight_frequency import WEIGHTINGS, row_weights, weigh_rows
from .weight_nested import assign_nested, child_scores, nested_child
from .weight_problem import F64, Problem

# L-BFGS memory for invertible sites. 20 pairs would save a third of the invertible phase on GPT-2
# small but move the final objective by ~1e-7 relative (up on the tiny sizes): kept at 100
LBFGS_HISTORY = 100
NEWTON_TOL = 1e-12    # Newton stops when a step lowers the site's objective by less than this fraction
NEWTON_CG = 20        # conjugate-gradient iterations per Newton step


class WeightOptions(PluginOptions):
    """Weight matching's options (``--option KEY=VALUE``; Python: keyword arguments)."""

    python_only = frozenset({"profile", "dataset"})

    max_iter: int = Field(30, ge=0, description="sweeps of block coordinate descent after the anchored start "
                          "(0: the anchored start only)")
    tol: float = Field(1e-3, ge=0, description="stop when a sweep improves the objective by less than this "
                       "fraction")
    permutations_only: bool = Field(False, description="solve every site as its kind's permutation restriction "
                                    "(the paper's baseline); kinds without one stay at the identity")
    invertible_steps: int = Field(50, ge=0, description="L-BFGS (or Newton) steps per invertible site and sweep "
                                  "(0: closed forms only)")
    invertible_solver: Literal["lbfgs", "newton"] = Field("lbfgs", description="refinement of invertible sites: "
                                                          "lbfgs, or newton (Gauss-Newton-preconditioned "
                                                          "Newton-CG: lower objective per site, slower)")
    precision: Literal["mixed", "float64"] = Field("mixed", description="dtype of the correlations that feed "
                                                   "assignments (float32 when mixed)")
    device: Device = Field(None, description="where to match (default: the state dicts' device)")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads while matching (default: "
                                "--threads, else OMP_NUM_THREADS, else 1 for small models and the idle cores "
                                "for large ones)")
    profile: Annotated[Any, shown_as("timer")] = Field(None, description="a timer with phase(name) (benchmarks)")
    # data-aware matching (weight_frequency): vocabulary / position rows weighted by how often the data uses them
    dataset: Annotated[Any, shown_as("Dataset")] = Field(None, description="the data (--data): weigh vocabulary "
                                                         "rows by their train-split token counts")
    token_weights: str | None = Field(None, description="a file of counts per token id (.json list or {id: count}, "
                                      ".safetensors 1-D tensor) to weigh vocabulary rows by, instead of the data's")
    # default sqrt: on the BPE GPT-2 pair (benchmarks/wm_reference.py) it gave the lowest barrier of the
    # four schemes, on the first 10 test batches and on the whole test split (docs/matching.md)
    token_weighting: Literal[WEIGHTINGS] = Field("sqrt", description="with data or token_weights: sqrt (of "
                                                 "counts), counts, mask (seen or not) or none (every row alike)")


class WeightMatching(Matcher):
    """Weight matching over every site of the spec (block coordinate descent)."""

    name = "weight"
    description = "weight matching: assignment / Procrustes / least squares per site, block coordinate descent"
    uses_data = True      # optional: given data, vocabulary rows are weighted by token frequency

    Options = WeightOptions

    def match(self, resolved, state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor], *,
              seed: int = 0, progress=None, **options) -> MatchResult:
        """Align B to A with the thread count of :func:`symdsl.threads.choose_threads` (see :meth:`_match`).

        On a shared CPU, threads without a free core make every small parallel op wait, so small
        problems run on one thread; ``info["threads"]`` records the count used.
        """
        threads = WeightOptions.parse(options, "matcher 'weight'").threads
        work = sum(state_a[name].numel() for name in resolved.tensors)
        with torch_threads(choose_threads(threads, work=work)):
            result = self._match(resolved, state_a, state_b, seed=seed, progress=progress, **options)
            result.info["threads"] = torch.get_num_threads()
        return result

    def _match(self, resolved, state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor], *,
               seed: int = 0, progress=None, **options) -> MatchResult:
        """Align B to A; ``options`` as declared in :class:`WeightOptions` (checked first).

        ``profile``: an optional timer with ``phase(name)`` returning a context manager (phases:
        correlate, assign, svd, invertible, apply, score, convert) and optionally
        ``note(event, **tensors)`` (events ``matmul`` with a, b; ``maximize_trace`` with kind, c,
        options; ``invertible`` with primal, dual Grams; ``lbfgs`` / ``newton`` with start,
        primal, dual, steps, kind), so that a benchmark can time the work and replay it alone.
        """
        settings = WeightOptions.parse(options, "matcher 'weight'")
        max_iter, tol, permutations_only = settings.max_iter, settings.tol, settings.permutations_only
        device = settings.device or next(iter(state_a.values())).device
        # weighting rows on axes no site acts on = plain matching of sqrt(w)-scaled rows (weight_frequency)
        weights = row_weights(resolved, dataset=settings.dataset, file=settings.token_weights,
                              weighting=settings.token_weighting)
        state_a, state_b = weigh_rows(state_a, weights), weigh_rows(state_b, weights)
        problem = Problem(resolved, state_a, state_b, device, permutations_only, settings.precision, settings.profile)
        problem.invertible_steps = settings.invertible_steps
        problem.invertible_solver = settings.invertible_solver
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
        norm = max(sum(problem.norm_a.values()), 1e-300)
        shown = {"distance": (max(history[-1], 0.0) / norm) ** 0.5}   # relative weight distance, as in info
        sweeps = 0
        for sweep in range(max_iter if history[-1] > exact else 0):
            for index, unit in enumerate(units):
                _update(problem, unit)
                report(progress, "weight matching", sweep * len(units) + index + 1, max_iter * len(units), **shown)
            history.append(sum(problem.cache.values()))
            sweeps, shown = sweep + 1, {"distance": (max(history[-1], 0.0) / norm) ** 0.5}
            if history[-2] - history[-1] <= tol * max(history[-2], 1e-300):
                break
        # the true total: sweeps stop early once converged, so the planned max_iter sweeps never all run
        report(progress, "weight matching", sweeps * len(units), sweeps * len(units), **shown)
        return MatchResult(problem.elements, self.name, history,
                           {"sweeps": len(history) - 1, "permutations_only": permutations_only,
                            "relative_distance": (max(history[-1], 0.0) / max(sum(problem.norm_a.values()), 1e-300)) ** 0.5,
                            "kept_objective": history[-1],
                            "objective_means": "squared distance between A's and aligned B's weights over the spec's "
                                               "tensors"})


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


def _anchored_start(problem: Problem, units) -> None:
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


def _update(problem: Problem, unit) -> None:
    parent, kids = unit
    sites = [parent, *kids]
    problem.unit = frozenset(sites)
    names = problem.touched(sites)
    before = sum(problem.cache[n] for n in names)
    saved = {s: (problem.elements[s], problem.is_identity[s]) for s in sites}
    scored: dict[str, float] = {}
    if kids:
        for kid in _solve_parent(problem, parent, kids):
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


def _solve_site(problem: Problem, site: str) -> dict[str, float]:
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
    for occ, term, b_norm in _terms(problem, site, dtype, norms=score_from_trace):
        c = term if c is None else c + term
        whole_axis = len(problem.r.tensors[occ.tensor].axes[occ.axis].parts) == 1
        # a term is kept to score its tensor only where that saves work: a vector (a bias, a norm gain) is
        # re-measured for less than its (n, n) term costs, and would crowd the matrices out of the budget
        if (score_from_trace and kind.square and counts[occ.tensor] == 1 and whole_axis and info.per is None
                and problem.a[occ.tensor].numel() >= term.numel()
                and problem.keep_term(term)):    # bounded: past it the tensor is re-measured after the solve
            scorable[occ.tensor] = (problem.norm_a[occ.tensor] + b_norm(), term)
    if c is None:
        return {}
    problem.set(site, problem.solve(solving, c, problem.solving_options(site, solving)))
    if not scorable:
        return {}
    with problem.phase("score"):
        matrix = problem.matrix(site)
        return {name: norms - 2.0 * float((matrix * term).sum()) for name, (norms, term) in scorable.items()}


def _terms(problem: Problem, site: str, dtype, norms: bool):
    """``(occurrence, A B'^T in dtype, ||B'||^2 as a callable)`` for the site's non-constant tensors,
    in :meth:`Problem.unfolded_pairs`'s order (so that their sum is the same to the last bit).

    A tensor whose other sites have not changed since its terms were formed gets them from
    ``problem.terms`` (symdsl.match.term_cache) without moving B or multiplying again; ``norms``:
    the kept entries carry ||B'||^2 for scoring from the trace.
    """
    for name in dict.fromkeys(o.tensor for o in problem.occ[site]):
        if name in problem.const or (problem.only is not None and name not in problem.only):
            continue
        stamp = problem.term_stamp(site, name, dtype)
        kept = problem.terms.get((site, name), stamp) if stamp is not None else None
        if kept is not None and (not norms or all(n is not None for _, _, n in kept)):
            for occ, term, b_norm in kept:
                yield occ, term, (lambda value=b_norm: value)
            continue
        fresh = []
        for occ, a, b in problem.unfolded_pairs(site, {site}, tensors=(name,)):
            term = problem.correlate(a, b, dtype)
            if stamp is None:
                yield occ, term, (lambda b=b: _squared_norm(problem, b))
                continue
            b_norm = _squared_norm(problem, b) if norms else None
            fresh.append((occ, term, b_norm))
            yield occ, term, (lambda value=b_norm: value)
        if fresh:
            problem.terms.put((site, name), stamp, fresh, sum(t.numel() * t.element_size() for _, t, _ in fresh))


def _squared_norm(problem: Problem, b: torch.Tensor) -> float:
    with problem.phase("score"):
        return float((b * b).sum())


def _circuits(problem: Problem, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(P, P, k, k): entry [p, q] is a[p] b[q]^T for a, b (P, k, M), as one matmul in the fast dtype."""
    p, k, m = a.shape
    flat = problem.correlate(a.reshape(p * k, m), b.reshape(p * k, m), problem.fast)   # (P k, P k)
    return flat.reshape(p, k, p, k).permute(0, 2, 1, 3)


def _solve_parent(problem: Problem, parent: str, kids: list[str]) -> list[str]:
    """Assign the parent (heads) on circuits its children cannot change, then reset the children;
    return the children in the order to solve them (a nested permutation last: see weight_nested)."""
    device = problem.device
    child = nested_child(problem, kids)
    if child is not None:
        assign_nested(problem, parent, child, child_scores(problem, parent, kids, child),
                      _parent_only_cost(problem, parent, kids))
        for kid in kids:
            if kid != child:
                _reset(problem, kid)
        return [kid for kid in kids if kid != child] + [child]
    exclude = {parent, *kids}
    cost = torch.zeros(problem.sites[parent].size, problem.sites[parent].size, dtype=problem.fast, device=device)
    for kid in kids:
        sides = problem.circuit_sides(kid, exclude)
        if sides is None:
            continue
        xa, xb, ya, yb = sides                                                         # (P, k, Mp), (P, k, Md)
        g1 = _circuits(problem, xa, xb)                                                # X_A[a] X_B[b]^T
        g2 = g1 if ya is xa else _circuits(problem, ya, yb)
        with problem.phase("correlate"):
            cost += (g1 * g2).sum((-1, -2))                                            # <X_A^T Y_A, X_B^T Y_B>
    cost += _parent_only_cost(problem, parent, kids)
    solving = problem.solving_kind(parent)
    moved_before = problem.version[parent]
    if solving is not None:
        problem.set(parent, problem.solve(solving, cost, problem.solving_options(parent, solving)).to(device))
    if problem.version[parent] != moved_before:
        for kid in kids:          # the children's elements belonged to the old head order
            _reset(problem, kid)
    return kids


def _parent_only_cost(problem: Problem, parent: str, kids: list[str]) -> torch.Tensor:
    """(P, P): correlations of the tensors where the parent appears without its children."""
    exclude = {parent, *kids}
    n = problem.sites[parent].size
    cost = torch.zeros(n, n, dtype=problem.fast, device=problem.device)
    for occ in problem.occ[parent]:
        binding = problem.r.tensors[occ.tensor]
        if any(f.site in kids for ax in binding.axes for p in ax.parts for f in p):
            continue
        if occ.tensor in problem.const:
            cost += problem.const[occ.tensor][1].to(cost.dtype)
            continue
        moved = problem.moved(occ.tensor, exclude)
        cost += problem.correlate(unfold(problem.a64(occ.tensor), binding, occ), unfold(moved, binding, occ), problem.fast)
    return cost


def _reset(problem: Problem, site_name: str) -> None:
    site = problem.sites[site_name]
    problem.set(site_name, site.kind.identity(site.size, site.size_in, site.batch, options=site.options,
                                              dtype=F64, device=problem.device), identity=True)


def _solve_invertible(problem: Problem, site: str) -> None:
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
            total = total + torch.sub(a, g @ b).square_().sum()
        if dual:
            inverse, singular = torch.linalg.inv_ex(g)
            if bool((singular != 0).any()):
                return float("inf")   # a singular candidate (e.g. the closed form on a lifted, rank-deficient head)
            inv_t = inverse.mT
            for a, b in dual:
                total = total + torch.sub(a, inv_t @ b).square_().sum()
        return float(total)

    with problem.phase("invertible"):
        problem.note("invertible", primal=gram_p, dual=gram_d)
        # a subgroup of GL(n) (rotary) brings its own fit; the kind's candidates are final
        own = kind.least_squares_solve(gram_p, gram_d, current, options=problem.sites[site].options)
        candidates = [current, *(least_squares_candidates(gram_p, gram_d) if own is None else own)]
    with problem.phase("score"):
        scores = [exact(c) if torch.isfinite(c).all() else float("inf") for c in candidates]
    index = min(range(len(scores)), key=scores.__getitem__)
    best, best_score = candidates[index], scores[index]
    scale = float(sum(g.norm for g in (gram_p, gram_d) if g is not None))
    if own is not None or best_score <= 1e-24 * scale or not (primal and dual) or problem.invertible_steps <= 0:
        # exact already, or one-sided (then the closed form is the least-squares optimum)
        if kind.contains(best, problem.sites[site].options):
            problem.set(site, best.detach())
        return
    # (..., k, k) work: a second thread only adds synchronisation (and stalls on a busy machine)
    with problem.phase("invertible"), torch_threads(1):
        problem.note(problem.invertible_solver, start=best, primal=gram_p, dual=gram_d,
                     steps=problem.invertible_steps, kind=kind)
        if problem.invertible_solver == "newton":
            refined, _ = refine_gauss_newton(best, gram_p, gram_d, max_iter=problem.invertible_steps, tol=NEWTON_TOL,
                                             newton_iter=NEWTON_CG)
            improved = bool(torch.isfinite(refined).all())
        else:
            refined, improved = refine_lbfgs(best, gram_objective(gram_p, gram_d), kind,
                                             max_iter=problem.invertible_steps, history_size=LBFGS_HISTORY,
                                             gradient=gram_gradient(gram_p, gram_d))
    if improved:
        with problem.phase("score"):
            if exact(refined) < best_score:
                best = refined
    if kind.contains(best, problem.sites[site].options):
        problem.set(site, best.detach())
