"""Running second moments of paired activations, and the matrices the solvers read from them.

For one plan (one node, one site family) A's and B's activations are (N, D) matrices whose
rows are the same samples (same input, same token) and whose columns are the family's
coordinates, D = P * m for a family with a parent (P heads of m coordinates, head-major) and
D = m, P = 1 otherwise. Everything the solvers need is a sum over samples, so batches stream
through and only these sums are kept (float64):

    n, sum_a, sum_b (D), sq_a, sq_b (D: diagonal second moments), ab = A^T B (D, D),
    and, where a per-head fit or a subspace similarity needs them, the per-head blocks
    aa, bb (P, m, m) of A^T A and B^T B.
"""
from __future__ import annotations

import torch

from .activation_graph import Plan

F64 = torch.float64


class Moments:
    """Sums over samples of one plan's paired activations.

    >>> from symdsl_builtins.matchers.activation_graph import Feature
    >>> plan = Plan("x", "s", None, None, (50, 3), (50, 3), (0,), (1,), (Feature("s", False, 3),))
    >>> m = Moments(plan, parent=False, blocks=False, device="cpu")
    >>> a = torch.randn(50, 3, dtype=torch.float64)
    >>> m.update(a, a[:, [2, 0, 1]])          # B's coordinate j is A's coordinate [2, 0, 1][j]
    >>> m.correlation().argmax(1).tolist()     # A's i is B's ...
    [1, 2, 0]
    """

    def __init__(self, plan: Plan, *, parent: bool, blocks: bool, device):
        self.plan = plan
        self.d = plan.size
        self.p = plan.features[0].size if parent else 1
        self.m = self.d // self.p
        zeros = lambda *shape: torch.zeros(*shape, dtype=F64, device=device)   # noqa: E731
        self.n = 0
        self.sum_a, self.sum_b, self.sq_a, self.sq_b = zeros(self.d), zeros(self.d), zeros(self.d), zeros(self.d)
        self.ab = zeros(self.d, self.d)
        self.aa = zeros(self.p, self.m, self.m) if blocks else None
        self.bb = zeros(self.p, self.m, self.m) if blocks else None

    def update(self, xa: torch.Tensor, xb: torch.Tensor) -> None:
        """Add samples: ``xa``, ``xb`` are (N, D), row i of both from the same input position."""
        xa, xb = xa.to(F64), xb.to(F64)
        self.n += xa.shape[0]
        self.sum_a += xa.sum(0)
        self.sum_b += xb.sum(0)
        self.sq_a += (xa * xa).sum(0)
        self.sq_b += (xb * xb).sum(0)
        self.ab += xa.mT @ xb
        if self.aa is not None:
            ha, hb = xa.reshape(-1, self.p, self.m), xb.reshape(-1, self.p, self.m)     # (N, P, m)
            self.aa += torch.einsum("npi,npj->pij", ha, ha)
            self.bb += torch.einsum("npi,npj->pij", hb, hb)

    # ------------------------------------------------------------------ derived matrices (A rows, B columns)

    def cross(self) -> torch.Tensor:
        """(D, D) raw cross second moment E[a b^T]: what Procrustes and regression fit."""
        return self.ab / self.n

    def correlation(self) -> torch.Tensor:
        """(D, D) Pearson correlation of A's coordinate i with B's coordinate j (0 for a constant one)."""
        mean_a, mean_b = self.sum_a / self.n, self.sum_b / self.n
        cov = self.ab / self.n - torch.outer(mean_a, mean_b)
        std_a = (self.sq_a / self.n - mean_a ** 2).clamp_min(0).sqrt()
        std_b = (self.sq_b / self.n - mean_b ** 2).clamp_min(0).sqrt()
        scale = torch.outer(std_a, std_b)
        tiny = 1e-12 * float(scale.max()) if scale.numel() else 0.0
        return torch.where(scale > tiny, cov / scale.clamp_min(tiny if tiny > 0 else 1e-300), torch.zeros_like(cov))

    def blocks(self, matrix: torch.Tensor, parent: torch.Tensor) -> torch.Tensor:
        """(P, m, m): block (a, parent[a]) of a (D, D) matrix: A's head a against B's head parent[a]."""
        four = matrix.reshape(self.p, self.m, self.p, self.m)
        return four[torch.arange(self.p, device=matrix.device), :, parent.to(matrix.device), :]

    def b_blocks(self, parent: torch.Tensor) -> torch.Tensor:
        """(P, m, m): E[b b^T] of B's head parent[a] for each slot a."""
        return self.bb[parent.to(self.bb.device)] / self.n

    def subspace_similarity(self) -> torch.Tensor:
        """(P, P): mean squared canonical correlation of A's head a with B's head b, in [0, 1].

        Head a's centred activations span a subspace of the sample space R^N; any invertible
        map of the head's own coordinates (x -> G x) leaves that subspace unchanged, so this
        compares heads on exactly what per-head GL maps cannot change.
        """
        mean_a = (self.sum_a / self.n).reshape(self.p, self.m)
        mean_b = (self.sum_b / self.n).reshape(self.p, self.m)
        cov_aa = self.aa / self.n - torch.einsum("pi,pj->pij", mean_a, mean_a)
        cov_bb = self.bb / self.n - torch.einsum("pi,pj->pij", mean_b, mean_b)
        cross = self.ab.reshape(self.p, self.m, self.p, self.m) / self.n - torch.einsum("ai,bj->aibj", mean_a, mean_b)
        wa, wb = inverse_sqrt(cov_aa), inverse_sqrt(cov_bb)
        k = torch.einsum("aij,ajbk,bkl->aibl", wa, cross, wb)        # whitened cross-covariance per head pair
        return (k ** 2).sum((1, 3)) / self.m


def inverse_sqrt(cov: torch.Tensor) -> torch.Tensor:
    """Batched pseudo-inverse square root of symmetric PSD (..., m, m); directions of ~zero variance dropped."""
    values, vectors = torch.linalg.eigh(cov)
    keep = values > 1e-10 * values.amax(-1, keepdim=True).clamp_min(1e-300)
    scale = torch.where(keep, values.clamp_min(1e-300).rsqrt(), torch.zeros_like(values))
    return (vectors * scale.unsqueeze(-2)) @ vectors.mT
