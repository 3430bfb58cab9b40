"""Orthogonal matrices O(n) (e.g. rotating the residual stream of a pre-norm model).

An element is a float tensor ``(..., n, n)`` with ``g @ g^T = I``; its dual
``g^{-T}`` is g itself.  Option ``preserve: ones`` restricts to the stabiliser
of the all-ones vector (``g @ 1 = 1``), the symmetry that survives
LayerNorm's mean subtraction; that subgroup is ``O(n-1)`` acting on the
orthogonal complement of the ones vector.
"""
from __future__ import annotations

import torch

from symdsl.groups.base import MatrixGroupKind
from symdsl.groups.plumbing import (Tensor, all_close, batch_shape,
                                    generator_device, is_float_matrix, tolerance)
from symdsl.groups.parametrizations import Parametrization, cayley, skew
from symdsl.groups.permutation import PermutationMatrix


def haar_orthogonal(n: int, batch: tuple[int, ...] = (), generator=None,
                    dtype: torch.dtype = torch.float64, device=None) -> Tensor:
    """Haar-random orthogonal matrices ``(*batch, n, n)``.

    QR of a Gaussian matrix, with column signs fixed so that ``diag(R) > 0``:
    without the fix Q would be biased by the QR convention.

    >>> q = haar_orthogonal(3, generator=torch.Generator().manual_seed(0))
    >>> torch.allclose(q @ q.T, torch.eye(3, dtype=torch.float64))
    True
    """
    z = torch.randn(*batch, n, n, generator=generator, dtype=dtype,
                    device=generator_device(generator, device)).to(device)
    q, r = torch.linalg.qr(z)
    signs = torch.where(r.diagonal(dim1=-2, dim2=-1) < 0, -1.0, 1.0).to(dtype)  # (*batch, n)
    return q * signs.unsqueeze(-2)                       # flip column j by sign of r[j, j]


def polar_factor(m: Tensor) -> Tensor:
    """``U @ V^T`` from the thin SVD of m ``(..., n_out, n_in)``, n_out >= n_in.

    The matrix with orthonormal columns nearest to m in Frobenius norm.

    >>> polar_factor(torch.tensor([[2.0, 0.0], [0.0, -3.0]]))
    tensor([[ 1.,  0.],
            [ 0., -1.]])
    """
    if m.shape[-1] == 0 or m.shape[-2] == 0:
        return m.clone()
    u, _, vh = torch.linalg.svd(m, full_matrices=False)
    return u @ vh


def ones_complement_basis(n: int, dtype: torch.dtype = torch.float64, device=None) -> Tensor:
    """A fixed orthonormal basis ``(n, n-1)`` of the vectors orthogonal to all-ones.

    Helmert basis: column k-1 (k = 1..n-1) is ``(1, ..., 1, -k, 0, ...)`` with
    k ones, normalised by ``sqrt(k (k + 1))``.

    >>> b = ones_complement_basis(3)
    >>> torch.allclose(b.T @ b, torch.eye(2, dtype=torch.float64)), b.sum(0).abs().max().item() < 1e-12
    (True, True)
    """
    rows = torch.arange(n, device=device).unsqueeze(1)     # (n, 1)
    ks = torch.arange(1, n, device=device).unsqueeze(0)    # (1, n-1)
    k = ks.to(dtype)                                        # sqrt in dtype, not float32
    b = (rows < ks).to(dtype) - k * (rows == ks).to(dtype)
    return b / torch.sqrt(k * (k + 1))


def embed_complement(q: Tensor, basis: Tensor) -> Tensor:
    """``ones ones^T / n + B q B^T``: acts as q on the complement, fixes the ones vector.

    q is ``(..., n-1, n-1)``, basis B is ``(n, n-1)``; result ``(..., n, n)``.
    """
    n = basis.shape[0]
    mean = torch.full((n, n), 1.0 / max(n, 1), dtype=q.dtype, device=q.device)
    return mean + basis @ q @ basis.T


def preserves_ones(options) -> bool:
    return bool(options) and options.get("preserve") == "ones"


class Orthogonal(MatrixGroupKind):
    """O(n); with ``options={"preserve": "ones"}`` only elements with ``g @ 1 = 1``.

    >>> k = Orthogonal()
    >>> g = k.random(4, options={"preserve": "ones"}, generator=torch.Generator().manual_seed(0))
    >>> torch.allclose(g @ torch.ones(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64))
    True
    """

    name = "orthogonal"
    isometric = True
    square = True
    self_dual = True
    options = {"preserve": ("ones",)}

    def fixes_ones(self, options=None) -> bool:
        """Only the ``preserve: ones`` subgroup fixes the all-ones vector."""
        return preserves_ones(options)

    def permutation_restriction(self, options=None) -> PermutationMatrix:
        """Permutation matrices (every one is orthogonal and fixes the ones vector).

        >>> Orthogonal().permutation_restriction({"preserve": "ones"}).name
        'permutation_matrix'
        """
        return PermutationMatrix()

    def lift_rule(self, options=None, *, per: bool = False) -> str | None:
        """Per-head maps embed; a ``preserve: ones`` stream is a LayerNorm residual; else no rule.

        >>> Orthogonal().lift_rule({"preserve": "ones"}), Orthogonal().lift_rule(), Orthogonal().lift_rule(per=True)
        ('residual', None, 'embed')
        """
        if per:
            return "embed"
        return "residual" if preserves_ones(options) else None

    def random(self, n_out, n_in=None, batch=(), *, options=None, generator=None,
               dtype=torch.float64, device=None) -> Tensor:
        """A Haar-random element ``(*batch, n, n)``.

        With ``preserve: ones``, a Haar-random O(n-1) element acting on the
        orthogonal complement of the ones vector (so ``g @ 1 = 1``).

        >>> g = Orthogonal().random(3, batch=(2,), generator=torch.Generator().manual_seed(0))
        >>> g.shape
        torch.Size([2, 3, 3])
        """
        self.validate_options(options)
        n, _ = self._sizes(n_out, n_in)
        batch = batch_shape(batch)
        if not preserves_ones(options):
            return haar_orthogonal(n, batch, generator, dtype, device)
        q = haar_orthogonal(max(n - 1, 0), batch, generator, dtype, device)  # (*batch, n-1, n-1)
        return embed_complement(q, ones_complement_basis(n, dtype, device))

    def dual(self, g: Tensor, *, n_in: int | None = None) -> Tensor:
        """``g`` itself (``g^{-T} = g`` for orthogonal g).

        >>> Orthogonal().dual(torch.eye(2)).shape
        torch.Size([2, 2])
        """
        self._check_n_in(g, n_in)
        return g

    def inverse(self, g: Tensor) -> Tensor:
        """The transpose ``g^T`` (batched over leading dims).

        >>> Orthogonal().inverse(torch.tensor([[0.0, -1.0], [1.0, 0.0]]))
        tensor([[ 0.,  1.],
                [-1.,  0.]])
        """
        return g.mT

    def contains(self, g, options=None, atol: float = 1e-8, *, n_in: int | None = None) -> bool:
        """True if g is square float with ``g g^T = I`` (and ``g @ 1 = 1`` with preserve ones).

        ``atol`` is raised to what g's dtype can resolve (float32 needs ~1e-5).

        >>> k = Orthogonal()
        >>> k.contains(torch.eye(3)), k.contains(2 * torch.eye(3))
        (True, False)
        >>> k.contains(-torch.eye(3), options={"preserve": "ones"})
        False
        """
        self.validate_options(options)
        if not is_float_matrix(g) or g.shape[-1] != g.shape[-2]:
            return False
        n = g.shape[-1]
        if n_in is not None and n_in != n:
            return False
        tol = tolerance(atol, g.dtype, n)
        if not all_close(g @ g.mT, torch.eye(n, dtype=g.dtype, device=g.device), tol):
            return False
        return not preserves_ones(options) or all_close(g.sum(dim=-1), 1.0, tol)

    def parametrize(self, g0: Tensor, *, options=None, n_in: int | None = None):
        """``g0 @ cayley(A)`` with A skew-symmetric (on the complement of 1 with ``preserve: ones``).

        >>> p = Orthogonal().parametrize(torch.eye(3, dtype=torch.float64), options={"preserve": "ones"})
        >>> p.element().shape
        torch.Size([3, 3])
        """
        self.validate_options(options)
        return CayleyOrthogonal(g0.to(torch.promote_types(g0.dtype, torch.float32)),
                                preserve_ones=preserves_ones(options))

    def project(self, m: Tensor, *, options=None) -> Tensor:
        """The nearest element in Frobenius norm: the polar factor ``U V^T`` of m.

        With ``preserve: ones``: write elements as ``11^T/n + B Q B^T`` for a
        fixed orthonormal basis B of the complement of ones; the nearest one
        takes Q = polar factor of ``B^T m B``.

        >>> Orthogonal().project(torch.tensor([[3.0, 0.0], [0.0, 0.5]]))
        tensor([[1., 0.],
                [0., 1.]])
        """
        self.validate_options(options)
        if m.dim() < 2 or m.shape[-1] != m.shape[-2]:
            raise ValueError(f"orthogonal.project needs square matrices (..., n, n), "
                             f"got shape {tuple(m.shape)}")
        if not preserves_ones(options):
            return polar_factor(m)
        basis = ones_complement_basis(m.shape[-1], m.dtype, m.device)  # (n, n-1)
        q = polar_factor(basis.T @ m @ basis)                          # (..., n-1, n-1)
        return embed_complement(q, basis)


class CayleyOrthogonal(Parametrization):
    """``g0 @ cayley(A)``, A skew-symmetric (zero at the start); with ``preserve_ones`` A fixes 1.

    With ``preserve_ones`` A lives on the complement of the ones vector (A = B K B^T for a
    basis B of that complement), so every iterate fixes 1.

    >>> p = CayleyOrthogonal(torch.eye(4, dtype=torch.float64))
    >>> bool(torch.equal(p.element(), torch.eye(4, dtype=torch.float64)))
    True
    >>> p = CayleyOrthogonal(torch.eye(3, dtype=torch.float64), preserve_ones=True)
    >>> primal, dual = p.dense()
    >>> bool(torch.allclose(primal @ torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)))
    True
    """

    def __init__(self, g0: Tensor, *, preserve_ones: bool = False):
        super().__init__()
        n = g0.shape[-1]
        self.register_buffer("start", g0.detach().clone())
        self.preserve_ones = preserve_ones
        inner = n - 1 if preserve_ones else n
        if preserve_ones:
            self.register_buffer("basis", ones_complement_basis(n, dtype=g0.dtype, device=g0.device))  # (n, n-1)
        self.generator = torch.nn.Parameter(torch.zeros(*g0.shape[:-2], inner, inner, dtype=g0.dtype,
                                                        device=g0.device))

    def rotation(self) -> Tensor:
        generator = skew(self.generator)
        if self.preserve_ones:
            basis: Tensor = self.get_buffer("basis")                    # (n, n-1)
            generator = basis @ generator @ basis.mT                    # (n, n), zero on the ones vector
        return cayley(generator)

    def dense(self):
        g = self.start @ self.rotation()
        return g, g

    def element(self) -> Tensor:
        with torch.no_grad():
            return self.dense()[0].detach().clone()
