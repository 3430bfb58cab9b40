"""Weight matching: block coordinate descent over every site of a spec.

Minimises  J(g) = sum_t ||A_t - act(g, B)_t||^2  one site at a time, the others fixed:
- permutation / orthogonal / stiefel / semi_permutation sites maximise tr(g^T C) with C the
  correlation of A and B (other sites applied) unfolded along the site: assignment,
  Procrustes (on the complement of 1 with ``preserve: ones``), thin Procrustes, surjective
  assignment;
- a permutation with ``per`` children (attention heads with per-head maps) is matched on
  quantities the children cannot change: for a per-head invertible map g acting as g on X and
  g^-T on Y, the circuit X^T Y is invariant, so heads are assigned on  <X_A^T Y_A, X_B^T Y_B>;
- invertible sites (g on some tensors, g^-T on others) are fitted by least squares: a
  closed-form start from the g-side, then L-BFGS on the exact objective.
A site's new element is kept only if J does not increase, so J is monotone; the sweep
stops when it improves by less than ``tol`` (relative) or after ``max_iter`` sweeps.
"""
from __future__ import annotations

from typing import Mapping

import torch

from symdsl.act.engine import act_tensor
from symdsl.act.transform import identity_transform
from symdsl.match.base import Matcher, MatchResult
from symdsl.match.refine import refine_lbfgs
from symdsl.match.solvers import maximize_trace
from symdsl.match.unfold import Occurrence, occurrences, unfold


class _Problem:
    """A and B in float64 on one device, the current elements, and the objective over chosen tensors."""

    def __init__(self, resolved, state_a, state_b, device, permutations_only):
        self.r = resolved
        self.sites = resolved.sites
        self.a = {n: state_a[n].detach().to(device=device, dtype=torch.float64) for n in resolved.tensors}
        self.b = {n: state_b[n].detach().to(device=device, dtype=torch.float64) for n in resolved.tensors}
        self.elements = identity_transform(resolved, dtype=torch.float64, device=device)
        self.occ = {s: occurrences(resolved, s) for s in self.sites}
        self.permutations_only = permutations_only
        self.only: set[str] | None = None    # restrict correlations to these tensors (anchor phase)
        self.invertible_steps = 0             # L-BFGS iterations refining invertible sites (0: closed forms only)
        self.cache: dict[str, float] = {}     # tensor -> ||A - act(g, B)||^2 for the current elements

    def touched(self, sites) -> list[str]:
        return sorted({o.tensor for s in sites for o in self.occ[s]})

    def moved(self, name: str, elements) -> torch.Tensor:
        return act_tensor(self.b[name], self.r.tensors[name], elements, self.sites)

    def objective(self, names, elements=None) -> float:
        elements = self.elements if elements is None else elements
        return float(sum(((self.a[n] - self.moved(n, elements)) ** 2).sum() for n in names))

    def errors(self, names) -> dict[str, float]:
        """||A_t - act(g, B)_t||^2 per tensor for the current elements (each tensor moved once)."""
        return {n: float(((self.a[n] - self.moved(n, self.elements)) ** 2).sum()) for n in names}

    def without(self, sites) -> dict:
        return {k: v for k, v in self.elements.items() if k not in sites}

    def unfolded_pairs(self, site: str, exclude: set[str]):
        """(occurrence, A unfolded, B unfolded with every site but ``exclude`` applied)."""
        parent = self.sites[site].per
        by_tensor: dict[str, list[Occurrence]] = {}
        for o in self.occ[site]:
            by_tensor.setdefault(o.tensor, []).append(o)
        for name, occs in by_tensor.items():
            if self.only is not None and name not in self.only:
                continue
            binding = self.r.tensors[name]
            # occurrences in different parts of one fused axis (q | k of c_attn) touch disjoint slices:
            # each is linear in g on its own
            disjoint = len({(o.axis, o.part) for o in occs}) == len(occs) and len({o.axis for o in occs}) == 1
            if len(occs) == 1 or disjoint:
                moved_b = self.moved(name, self.without(exclude))
                for o in occs:
                    yield o, unfold(self.a[name], binding, o, parent), unfold(moved_b, binding, o, parent)
                continue
            kind = self.sites[site].kind
            if not kind.self_dual or parent is not None:
                continue   # several occurrences of a non-self-dual site in one tensor: not linear in g; skip it
            moved_b = self.moved(name, self.without(exclude - {site}))
            undo = kind.inverse(self.elements[site])
            for o in occs:  # linearise: current g on the other occurrences, undone on this one
                yield o, unfold(self.a[name], binding, o), kind.apply(undo, unfold(moved_b, binding, o), 0)


class WeightMatching(Matcher):
    """Weight matching over every site of the spec (block coordinate descent)."""

    name = "weight"
    description = "weight matching: assignment / Procrustes / least squares per site, block coordinate descent"

    def match(self, resolved, state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor], *,
              seed: int = 0, progress=None, max_iter: int = 30, tol: float = 1e-9, permutations_only: bool = False,
              invertible_steps: int = 50, device=None, **options) -> MatchResult:
        if options:
            from symdsl.errors import UsageError

            raise UsageError(f"weight matching has no option(s) {sorted(options)}; options: max_iter, tol, "
                             "permutations_only, invertible_steps, device")
        device = device or next(iter(state_a.values())).device
        problem = _Problem(resolved, state_a, state_b, device, permutations_only)
        problem.invertible_steps = int(invertible_steps)
        everything = list(resolved.tensors)
        # per-tensor errors for the current elements: a unit re-measures only its own tensors
        problem.cache = problem.errors(everything)
        history = [sum(problem.cache.values())]
        units = _units(resolved)
        _anchored_start(problem, units)
        history.append(sum(problem.cache.values()))
        for sweep in range(max_iter):
            for index, unit in enumerate(units):
                _update(problem, unit)
                if progress is not None:
                    progress("weight matching", sweep * len(units) + index + 1, max_iter * len(units))
            history.append(sum(problem.cache.values()))
            if history[-2] - history[-1] <= tol * max(history[-2], 1e-300):
                break
        return MatchResult(problem.elements, self.name, history,
                           {"sweeps": len(history) - 1, "permutations_only": permutations_only,
                            "relative_distance": (history[-1] / max(_norm2(problem.a), 1e-300)) ** 0.5})


def _norm2(tensors) -> float:
    return float(sum((t ** 2).sum() for t in tensors.values()))


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
    names = problem.touched(sites)
    before = sum(problem.cache[n] for n in names)
    saved = {s: problem.elements[s] for s in sites}
    scored: dict[str, float] = {}
    if kids:
        _solve_parent(problem, parent, kids)
        for kid in kids:
            _solve_site(problem, kid)
    else:
        scored = _solve_site(problem, parent)
    after = {**scored, **problem.errors([n for n in names if n not in scored])}
    if sum(after.values()) > before * (1 + 1e-12) + 1e-300:
        problem.elements.update(saved)   # never let J go up (the cached errors still hold)
    else:
        problem.cache.update(after)


def _solve_site(problem: _Problem, site: str) -> dict[str, float]:
    """Update one site; return the new errors of the tensors it could score without re-applying g.

    For a norm-preserving site (permutation, orthogonal) occurring once on a whole axis of a
    tensor,  ||A - g B'||^2 = ||A||^2 + ||B'||^2 - 2 tr(g^T a b^T)  from the unfolded pair already
    at hand, so the caller need not move that tensor again (the embedding matrices are the
    largest tensors a residual rotation touches).
    """
    info = problem.sites[site]
    kind = info.kind
    if kind.name == "invertible":
        if not problem.permutations_only:
            _solve_invertible(problem, site)
        return {}
    c, scorable = None, {}
    counts: dict[str, int] = {}
    for occ in problem.occ[site]:
        counts[occ.tensor] = counts.get(occ.tensor, 0) + 1
    for occ, a, b in problem.unfolded_pairs(site, {site}):
        term = a @ b.mT
        c = term if c is None else c + term
        whole_axis = len(problem.r.tensors[occ.tensor].axes[occ.axis].parts) == 1
        if kind.self_dual and kind.square and counts[occ.tensor] == 1 and whole_axis and info.per is None:
            scorable[occ.tensor] = (float((a * a).sum() + (b * b).sum()), term)
    if c is None:
        return {}
    if problem.permutations_only and kind.name == "orthogonal":
        from symdsl.groups import get_group_kind

        perm = get_group_kind("permutation")
        g = perm.to_matrix(maximize_trace(perm, c), dtype=torch.float64).to(c.device)
    else:
        g = maximize_trace(kind, c, info.options).to(c.device)
    problem.elements[site] = g
    matrix = g if g.is_floating_point() else kind.to_matrix(g, dtype=torch.float64).to(c.device)
    return {name: norms - 2.0 * float((matrix * term).sum()) for name, (norms, term) in scorable.items()}


def _solve_parent(problem: _Problem, parent: str, kids: list[str]) -> None:
    """Assign the parent (heads) on circuits its children cannot change, then reset the children."""
    exclude = {parent, *kids}
    n = problem.sites[parent].size
    device = next(iter(problem.a.values())).device
    cost = torch.zeros(n, n, dtype=torch.float64, device=device)
    for kid in kids:
        kind = problem.sites[kid].kind
        if problem.permutations_only and kind.name == "invertible":
            kind_self_dual = True
        else:
            kind_self_dual = kind.self_dual
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
        g1 = torch.einsum("aim,bjm->abij", xa, xb)                                     # X_A[a] X_B[b]^T
        g2 = torch.einsum("aim,bjm->abij", ya, yb)
        cost += (g1 * g2).sum((-1, -2))                                                # <X_A^T Y_A, X_B^T Y_B>
    for occ in problem.occ[parent]:   # tensors where the parent appears without its children
        binding = problem.r.tensors[occ.tensor]
        if any(f.site in kids for ax in binding.axes for p in ax.parts for f in p):
            continue
        moved = problem.moved(occ.tensor, problem.without(exclude))
        cost += unfold(problem.a[occ.tensor], binding, occ) @ unfold(moved, binding, occ).mT
    info = problem.sites[parent]
    problem.elements[parent] = maximize_trace(info.kind, cost, info.options).to(device)
    for kid in kids:
        site = problem.sites[kid]
        problem.elements[kid] = site.kind.identity(site.size, site.size_in, site.batch, options=site.options,
                                                   dtype=torch.float64, device=device)


def _sylvester_fit(primal, dual) -> torch.Tensor:
    """Closed-form g for  sum ||g B_p - A_p||^2 + sum ||g^T A_d - B_d||^2.

    The dual residual A_d - g^-T B_d, multiplied by g^T, becomes linear in g; the normal
    equations are the Sylvester equation  g P + Q g = R  with P = B_p B_p^T, Q = A_d A_d^T
    (both symmetric PSD, batched per head), solved in the eigenbases of P and Q.
    Exact when a g fits both sides exactly (a recovery problem).
    """
    p = sum(b @ b.mT for _, b in primal)                  # (..., k, k)
    q = sum(a @ a.mT for a, _ in dual)
    r = sum(a @ b.mT for a, b in primal) + sum(a @ b.mT for a, b in dual)
    p_val, p_vec = torch.linalg.eigh(p)
    q_val, q_vec = torch.linalg.eigh(q)
    denom = q_val.unsqueeze(-1) + p_val.unsqueeze(-2)     # (..., k, k): q_i + p_j
    floor = 1e-12 * denom.abs().amax(dim=(-1, -2), keepdim=True).clamp_min(1e-300)
    core = (q_vec.mT @ r @ p_vec) / denom.clamp_min(floor)
    return q_vec @ core @ p_vec.mT


def _solve_invertible(problem: _Problem, site: str) -> None:
    """min_g sum_primal ||A - g B||^2 + sum_dual ||A - g^-T B||^2 (batched over ``per``)."""
    primal, dual = [], []
    for occ, a, b in problem.unfolded_pairs(site, {site}):
        (dual if occ.dual else primal).append((a, b))
    if not primal and not dual:
        return
    current = problem.elements[site]

    def loss(g):
        total = 0.0
        for a, b in primal:
            total = total + ((a - g @ b) ** 2).sum()
        if dual:
            inv_t = torch.linalg.inv(g).mT
            for a, b in dual:
                total = total + ((a - inv_t @ b) ** 2).sum()
        return total

    candidates = [current]
    if primal:   # closed form from the g side: g = (A B^T)(B B^T)^-1
        ab = sum(a @ b.mT for a, b in primal)
        bb = sum(b @ b.mT for a, b in primal)
        eye = torch.eye(bb.shape[-1], dtype=bb.dtype, device=bb.device)
        candidates.append(torch.linalg.solve(bb + 1e-12 * bb.diagonal(dim1=-2, dim2=-1).mean() * eye, ab.mT).mT)
    if primal and dual:   # both sides at once, reweighted to be linear: a Sylvester equation
        candidates.append(_sylvester_fit(primal, dual))
    if dual:     # closed form from the g^-T side
        ab = sum(a @ b.mT for a, b in dual)
        bb = sum(b @ b.mT for a, b in dual)
        eye = torch.eye(bb.shape[-1], dtype=bb.dtype, device=bb.device)
        h = torch.linalg.solve(bb + 1e-12 * bb.diagonal(dim1=-2, dim2=-1).mean() * eye, ab.mT).mT
        if torch.isfinite(h).all() and torch.linalg.matrix_rank(h).min() == h.shape[-1]:
            candidates.append(torch.linalg.inv(h).mT)
    with torch.no_grad():
        scores = [float(loss(c)) if torch.isfinite(c).all() else float("inf") for c in candidates]
    best = candidates[min(range(len(scores)), key=scores.__getitem__)]
    scale = sum(float((a ** 2).sum()) for a, _ in primal + dual)
    if min(scores) <= 1e-24 * scale or not (primal and dual) or problem.invertible_steps <= 0:
        # exact already, or one-sided (then the closed form is the least-squares optimum)
        if problem.sites[site].kind.contains(best):
            problem.elements[site] = best.detach()
        return
    refined, improved = refine_lbfgs(best, loss, problem.sites[site].kind, max_iter=problem.invertible_steps)
    if improved:
        best = refined
    if problem.sites[site].kind.contains(best):
        problem.elements[site] = best.detach()
