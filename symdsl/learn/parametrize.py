"""Trainable parametrisations of group elements, for learned matching.

Each parametrisation is a ``torch.nn.Module`` that starts at a given element ``g0`` and whose
:meth:`Parametrization.dense` returns the pair ``(primal, dual)`` of dense matrices
``(..., n_out, n_in)`` that the differentiable action contracts tensors with: ``primal`` on axes
bound to the site, ``dual`` on axes bound to its dual (``site'``). :meth:`element` returns the
current element in the kind's own representation (an index array for permutations).

- :class:`StraightThroughPermutation` (``permutation``; also an orthogonal site restricted to
  permutations): a score matrix S, initialised at the one-hot matrix of g0. The forward pass
  uses the hard assignment P = argmax_P tr(P^T S) (scipy); the backward pass treats P as S
  (straight-through: P + S - stop_gradient(S)).
- :class:`StraightThroughSemiPermutation` (``semi_permutation``): the same with the surjective
  assignment; the dual divides each input's copies by their count.
- :class:`CayleyOrthogonal` (``orthogonal``, ``preserve: ones``): g = g0 · cayley(A) with A
  skew-symmetric, A = 0 at the start. With ``preserve: ones`` A lives on the complement of
  the ones vector (A = B K B^T for a basis B of that complement), so every iterate fixes 1.
- :class:`CayleyStiefel` (``stiefel``): g = cayley(A) · g0 with A skew-symmetric (n_out x n_out).
- :class:`FreeInvertible` (``invertible``): the matrix itself, dual ``inv(g)^T``; after each
  optimiser step :meth:`Parametrization.project` clips its singular values so the condition
  number stays below ``max_condition``.

Plugin group kinds provide their own through ``GroupKind.parametrize``. :class:`Fixed` holds
an element that is not trained (a frozen site) so that it still acts in the dense action;
:func:`parametrize_sites` builds one parametrisation per site of a resolved spec.

>>> p = CayleyOrthogonal(torch.eye(3, dtype=torch.float64), preserve_ones=True)
>>> primal, dual = p.dense()
>>> bool(torch.allclose(primal @ torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)))
True
"""
from __future__ import annotations

from typing import Mapping

import torch

from ..errors import UsageError
from ..groups.orthogonal import ones_complement_basis


class Parametrization(torch.nn.Module):
    """A trainable group element. Subclasses implement :meth:`dense` and :meth:`element`.

    ``lr_scale`` multiplies the optimiser's learning rate for this element's parameters: a
    straight-through score matrix must move by O(1) before its assignment changes, while a
    rotation's generator acts on the weights directly. Score matrices default to 10x (what
    learning permutations alone needs); the learned matcher lowers it to 1x when continuous
    maps are learned too (see its ``permutation_lr`` option).
    """

    lr_scale: float = 1.0

    def dense(self) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - abstract
        """``(primal, dual)`` dense matrices ``(..., n_out, n_in)``, differentiable in the parameters."""
        raise NotImplementedError

    def element(self) -> torch.Tensor:  # pragma: no cover - abstract
        """The current element in the group kind's own representation (detached)."""
        raise NotImplementedError

    def project(self) -> None:
        """Called after every optimiser step: pull the parameters back to a valid element."""

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`dense` (so ``torch.func.functional_call`` can evaluate it at other parameters)."""
        return self.dense()


def cayley(a: torch.Tensor) -> torch.Tensor:
    """``(I - A)^-1 (I + A)``: orthogonal for skew-symmetric A (batched over leading dims).

    >>> a = torch.tensor([[0.0, 0.3], [-0.3, 0.0]], dtype=torch.float64)
    >>> q = cayley(a)
    >>> bool(torch.allclose(q @ q.T, torch.eye(2, dtype=torch.float64)))
    True
    """
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    return torch.linalg.solve(eye - a, eye + a)


def _skew(k: torch.Tensor) -> torch.Tensor:
    return k - k.mT


class StraightThroughPermutation(Parametrization):
    """Hard permutation forward, straight-through gradient to a score matrix.

    ``g0`` is an index array ``(..., n)`` or a dense permutation matrix ``(..., n, n)``
    (``as_matrix=True`` makes :meth:`element` return a dense matrix, for an orthogonal site
    restricted to permutations).

    >>> p = StraightThroughPermutation(torch.tensor([2, 0, 1]))
    >>> p.element()
    tensor([2, 0, 1])
    >>> primal, dual = p.dense()
    >>> primal.argmax(-1)
    tensor([2, 0, 1])
    """

    lr_scale = 10.0

    def __init__(self, g0: torch.Tensor, *, dtype=torch.float64, as_matrix: bool = False):
        super().__init__()
        if g0.is_floating_point():
            matrix = g0.to(dtype)
        else:
            matrix = torch.nn.functional.one_hot(g0.long(), g0.shape[-1]).to(dtype)
        self.as_matrix = as_matrix
        self.scores = torch.nn.Parameter(matrix.clone())      # (..., n, n)

    def _hard_index(self) -> torch.Tensor:
        from ..groups import get_group_kind

        return get_group_kind("permutation").project(self.scores.detach())

    def _hard_matrix(self) -> torch.Tensor:
        index = self._hard_index()
        return torch.nn.functional.one_hot(index, self.scores.shape[-1]).to(self.scores.dtype)

    def dense(self):
        soft = self.scores
        matrix = self._hard_matrix() + soft - soft.detach()   # value: hard; gradient: to the scores
        return matrix, matrix                                 # a permutation matrix is its own dual

    def element(self) -> torch.Tensor:
        return self._hard_matrix() if self.as_matrix else self._hard_index()


class StraightThroughSemiPermutation(StraightThroughPermutation):
    """Hard surjective assignment forward (each input copied at least once), straight-through backward.

    The dual divides every copy of input j by the number of copies of j (pinv(M)^T for a 0/1
    matrix M with one 1 per row).

    >>> p = StraightThroughSemiPermutation(torch.tensor([0, 1, 1]), n_in=2)
    >>> primal, dual = p.dense()
    >>> dual.detach()
    tensor([[1.0000, 0.0000],
            [0.0000, 0.5000],
            [0.0000, 0.5000]], dtype=torch.float64)
    """

    def __init__(self, g0: torch.Tensor, *, n_in: int, dtype=torch.float64):
        torch.nn.Module.__init__(self)
        self.as_matrix = False
        matrix = torch.nn.functional.one_hot(g0.long(), n_in).to(dtype)   # (..., n_out, n_in)
        self.scores = torch.nn.Parameter(matrix.clone())

    def _hard_index(self) -> torch.Tensor:
        from ..match.solvers import maximize_trace
        from ..groups import get_group_kind

        return maximize_trace(get_group_kind("semi_permutation"), self.scores.detach())

    def dense(self):
        hard = self._hard_matrix()                                   # (..., n_out, n_in)
        matrix = hard + self.scores - self.scores.detach()
        counts = hard.sum(-2, keepdim=True).clamp_min(1.0)           # (..., 1, n_in): copies of each input
        return matrix, matrix / counts


class CayleyOrthogonal(Parametrization):
    """``g0 @ cayley(A)``, A skew-symmetric (zero at the start); with ``preserve_ones`` A fixes 1.

    >>> p = CayleyOrthogonal(torch.eye(4, dtype=torch.float64))
    >>> bool(torch.equal(p.element(), torch.eye(4, dtype=torch.float64)))
    True
    """

    def __init__(self, g0: torch.Tensor, *, preserve_ones: bool = False):
        super().__init__()
        n = g0.shape[-1]
        self.register_buffer("start", g0.detach().clone())
        self.preserve_ones = preserve_ones
        inner = n - 1 if preserve_ones else n
        if preserve_ones:
            self.register_buffer("basis", ones_complement_basis(n, dtype=g0.dtype, device=g0.device))  # (n, n-1)
        self.generator = torch.nn.Parameter(torch.zeros(*g0.shape[:-2], inner, inner, dtype=g0.dtype,
                                                        device=g0.device))

    def rotation(self) -> torch.Tensor:
        skew = _skew(self.generator)
        if self.preserve_ones:
            skew = self.basis @ skew @ self.basis.mT       # (n, n), zero on the ones vector
        return cayley(skew)

    def dense(self):
        g = self.start @ self.rotation()
        return g, g

    def element(self) -> torch.Tensor:
        with torch.no_grad():
            return self.dense()[0].detach().clone()


class CayleyStiefel(Parametrization):
    """``cayley(A) @ g0`` for a rectangular g0 ``(n_out, n_in)`` with orthonormal columns.

    >>> g0 = torch.eye(3, 2, dtype=torch.float64)
    >>> p = CayleyStiefel(g0)
    >>> primal, dual = p.dense()
    >>> primal.shape, bool(torch.equal(primal, dual))
    (torch.Size([3, 2]), True)
    """

    def __init__(self, g0: torch.Tensor):
        super().__init__()
        self.register_buffer("start", g0.detach().clone())
        n = g0.shape[-2]
        self.generator = torch.nn.Parameter(torch.zeros(*g0.shape[:-2], n, n, dtype=g0.dtype, device=g0.device))

    def dense(self):
        g = cayley(_skew(self.generator)) @ self.start
        return g, g        # orthonormal columns: pinv(g)^T = g

    def element(self) -> torch.Tensor:
        with torch.no_grad():
            return self.dense()[0].detach().clone()


class FreeInvertible(Parametrization):
    """The matrix itself (batched per head), dual ``inv(g)^T``; conditioning kept below ``max_condition``.

    >>> p = FreeInvertible(2 * torch.eye(2, dtype=torch.float64))
    >>> primal, dual = p.dense()
    >>> dual.detach()
    tensor([[0.5000, 0.0000],
            [0.0000, 0.5000]], dtype=torch.float64)
    """

    def __init__(self, g0: torch.Tensor, *, max_condition: float = 1e4):
        super().__init__()
        self.matrix = torch.nn.Parameter(g0.detach().clone())
        self.max_condition = float(max_condition)

    def dense(self):
        return self.matrix, torch.linalg.inv(self.matrix).mT

    def element(self) -> torch.Tensor:
        return self.matrix.detach().clone()

    def project(self) -> None:
        with torch.no_grad():
            u, s, vh = torch.linalg.svd(self.matrix)                 # s: (..., k), descending
            floor = s[..., :1] / self.max_condition
            if bool((s < floor).any()):
                self.matrix.copy_(u @ torch.diag_embed(torch.maximum(s, floor)) @ vh)


class Fixed(Parametrization):
    """An element that is not trained: constant dense matrices, no parameters.

    >>> f = Fixed(torch.tensor([1, 0]), kind=__import__("symdsl.groups", fromlist=["x"]).get_group_kind("permutation"))
    >>> f.dense()[0], list(f.parameters())
    (tensor([[0., 1.],
            [1., 0.]], dtype=torch.float64), [])
    """

    def __init__(self, g: torch.Tensor, *, kind, n_in: int | None = None, dtype=torch.float64):
        super().__init__()
        self.register_buffer("value", g.detach().clone())
        dense = (lambda m: m.to(dtype) if m.is_floating_point() else kind.to_matrix(m, dtype=dtype, n_in=n_in))
        self.register_buffer("primal", dense(g))
        self.register_buffer("dual_matrix", dense(kind.dual(g, n_in=n_in)))

    def dense(self):
        return self.primal, self.dual_matrix

    def element(self) -> torch.Tensor:
        return self.value.clone()


def parametrize_sites(resolved, start: Mapping[str, torch.Tensor], *, permutations_only: bool = False,
                      dtype=torch.float32, device=None, freeze=()) -> dict[str, Parametrization]:
    """site -> parametrisation starting at ``start[site]``, for every site of ``resolved``.

    Frozen sites, and with ``permutations_only`` the invertible ones, become :class:`Fixed` at
    their starting element (so they still act); with ``permutations_only`` an orthogonal site is
    learned as a permutation (:class:`StraightThroughPermutation` returning a dense matrix).
    A kind without ``parametrize`` is a UsageError naming the site and the fix.

    >>> from symdsl.plugins import load
    >>> from symdsl.spec import load_spec_text, resolve
    >>> from symdsl.act import identity_transform
    >>> spec = load_spec_text('symdsl: 1\\nname: t\\nsites: {h: {group: orthogonal, size: 3}}\\n'
    ...                       'tensors: {weight: "h _", bias: h}\\n')
    >>> r = resolve(spec, torch.nn.Linear(2, 3), registries=load())
    >>> sorted(type(p).__name__ for p in parametrize_sites(r, identity_transform(r)).values())
    ['CayleyOrthogonal']
    """
    unknown = sorted(set(freeze) - set(resolved.sites))
    if unknown:
        raise UsageError(f"freeze names site(s) {unknown[:5]} that spec '{resolved.spec.name}' does not have; "
                         f"its sites: {', '.join(list(resolved.sites)[:8])} ...")
    params: dict[str, Parametrization] = {}
    for name, site in resolved.sites.items():
        g0 = start[name].to(device=device)
        if g0.is_floating_point():
            g0 = g0.to(dtype)
        if name in freeze or (permutations_only and site.kind.name == "invertible"):
            params[name] = Fixed(g0, kind=site.kind, n_in=site.size_in, dtype=dtype).to(device)
        elif permutations_only and site.kind.name == "orthogonal":
            params[name] = StraightThroughPermutation(g0, dtype=dtype, as_matrix=True).to(device)
        else:
            try:
                params[name] = site.kind.parametrize(g0, options=site.options, n_in=site.size_in).to(device)
            except NotImplementedError as exc:
                raise UsageError(f"site '{name}' (group {site.kind.name}) cannot be learned: {exc}; keep it at its "
                                 f"starting element with --option freeze=[{name}]") from None
    return params


def trained_sites(params: Mapping[str, Parametrization]) -> list[str]:
    """The sites whose parametrisation has parameters (not :class:`Fixed`)."""
    return sorted(name for name, p in params.items() if any(True for _ in p.parameters()))
