"""Weight matching of a parent permutation whose per-children include a permutation.

Grouped-query attention: a key/value head (the parent, P positions) serves g query heads (a
permutation child: one permutation of its g positions per parent position) and carries
per-parent maps (qk, ov: matrix children, acting alike on all g query heads of the group).
The circuits X^T Y of a matrix child (the queries' block of query head j against its group's
keys; the value block against the output projection's block of query head j) do not change
under the matrix children, so

    S[a, b, j, j'] = <circuit_A[a, j], circuit_B[b, j']>          (P, P, g, g)

compares A's query head (a, j) with B's (b, j'). Each parent pair (a, b) gets the best matching
of its query heads (an assignment on S[a, b]), the parent is assigned on those values, and the
child at A's position a is the matching of the pair (a, parent(a)).
"""
from __future__ import annotations

import torch

from .weight_problem import Problem


def nested_child(problem: Problem, kids: list[str]) -> str | None:
    """The one child solved as a permutation of positions inside each parent position (None if
    there is none, or more than one: then the parent is matched on the plain circuits)."""
    found = [kid for kid in kids
             if (kind := problem.solving_kind(kid)) is not None and kind.discrete and kind.permutes_positions]
    return found[0] if len(found) == 1 else None


def _pair_scores(problem: Problem, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(P, P, m, m, n, n) from a, b (P, m, n, M): entry [p, q, i, j] is a[p, i] b[q, j]^T."""
    p, m, n, width = a.shape
    flat = problem.correlate(a.reshape(p * m * n, width), b.reshape(p * m * n, width), problem.fast)
    return flat.reshape(p, m, n, p, m, n).permute(0, 3, 1, 4, 2, 5)


def child_scores(problem: Problem, parent: str, kids: list[str], child: str) -> torch.Tensor:
    """S (P, P, m, m): how well A's (parent a, child position i) matches B's (b, j), on quantities
    that the matrix children cannot change."""
    exclude = {parent, *kids}
    n_parent, m = problem.sites[parent].size, problem.sites[child].size
    score = torch.zeros(n_parent, n_parent, m, m, dtype=problem.fast, device=problem.device)
    for kid in kids:
        if kid == child:
            continue
        sides = problem.circuit_sides(kid, exclude, inner=child)
        if sides is None:
            continue
        xa, xb, ya, yb = sides                                                         # (P, m, n, M)
        g1 = _pair_scores(problem, xa, xb)
        g2 = g1 if ya is xa else _pair_scores(problem, ya, yb)
        with problem.phase("correlate"):
            score += (g1 * g2).sum((-1, -2))                                            # <X_A^T Y_A, X_B^T Y_B>
    with_matrix_kids = {o.tensor for kid in kids if kid != child for o in problem.occ[kid]}
    for occ, a, b in problem.unfolded_pairs(child, exclude):
        if occ.tensor in with_matrix_kids:
            continue
        p, m_, width = a.shape                                                          # (P, m, M): the child alone
        flat = problem.correlate(a.reshape(p * m_, width), b.reshape(p * m_, width), problem.fast)
        score += flat.reshape(p, m_, p, m_).permute(0, 2, 1, 3)
    return score


def assign_nested(problem: Problem, parent: str, child: str, score: torch.Tensor, parent_cost: torch.Tensor) -> None:
    """Set the parent and the child from S (P, P, m, m) and the parent's own cost (P, P)."""
    n_parent, m = score.shape[0], score.shape[-1]
    child_kind = problem.solving_kind(child)
    flat = score.reshape(n_parent * n_parent, m, m)
    inner = problem.solve(child_kind, flat, problem.solving_options(child, child_kind)).to(problem.device)
    with problem.phase("correlate"):
        values = (child_kind.to_matrix(inner, dtype=flat.dtype) * flat).sum((-1, -2)).reshape(n_parent, n_parent)
    parent_kind = problem.solving_kind(parent)
    partner = torch.arange(n_parent, device=problem.device)
    if parent_kind is not None:
        element = problem.solve(parent_kind, values + parent_cost.to(values.dtype),
                                problem.solving_options(parent, parent_kind)).to(problem.device)
        problem.set(parent, element)
        partner = parent_kind.to_matrix(element, dtype=values.dtype).argmax(-1)         # B's index at A's position
    inner = inner.reshape(n_parent, n_parent, *inner.shape[1:])
    problem.set(child, inner[torch.arange(n_parent, device=problem.device), partner])
