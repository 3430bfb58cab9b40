"""The contract every group kind follows, plus the tensor plumbing kinds share.

A *group kind* names a family of parameter-space symmetries acting on one axis
of a tensor (a hidden dimension, a head dimension, ...).  Elements are plain
tensors, so they batch, move between devices and save like any weight.  There
are two representations:

* index elements (``matrix_based = False``): a LongTensor ``g`` of shape
  ``(..., n_out)`` with entries in ``range(n_in)``.  Applying ``g`` to a vector
  ``x`` gives ``y[a] = x[g[a]]``, i.e. ``to_matrix(g)[a, g[a]] = 1``.
* matrix elements (``matrix_based = True``): a float tensor
  ``(..., n_out, n_in)`` acting as ``y = g @ x``.

The *dual* of an element is the matrix used on the other side of a weight
product so that the network function is unchanged: ``g^{-T}`` for square
kinds and ``pinv(g)^T`` for rectangular ones (``W2 @ pinv(M) @ M @ W1``).
"""
from __future__ import annotations

import abc
from typing import Mapping

import torch

from symdsl.errors import suggest
from symdsl.groups.plumbing import (Tensor, apply_index, apply_matrix, batch_shape, expand_batch, is_index_array,
                                    normalize_axes)



# --------------------------------------------------------------------------- base class


class GroupKind(abc.ABC):
    """One family of symmetries; subclasses describe how its elements behave.

    Attributes:
        name: the kind's name in specs (``"orthogonal"``, ...).
        square: elements map ``R^n -> R^n``; if False they map
            ``R^n_in -> R^n_out`` with ``n_out >= n_in``.
        self_dual: ``dual(g)`` is ``g`` itself for every element.
        matrix_based: elements are float matrices (else index arrays).
        options: allowed option names -> tuple of allowed values.

    >>> from symdsl.groups.permutation import Permutation
    >>> kind = Permutation()
    >>> kind.name, kind.square, kind.self_dual, kind.matrix_based
    ('permutation', True, True, False)
    """

    name: str = ""
    square: bool = True
    self_dual: bool = False
    matrix_based: bool = True
    options: dict[str, tuple] = {}

    # -- capabilities: what analyses ask of a kind instead of testing its name ----------
    #: Every element only moves coordinates (``y[a] = x[g[a]]``), so it commutes with any
    #: function applied coordinate by coordinate (GELU, an elementwise product, dropout).
    elementwise_equivariant: bool = False
    #: Every element is an isometry, ``||g x|| = ||x||`` (needed to commute with RMS and
    #: LayerNorm once their gain is constant).
    isometric: bool = False

    def fixes_ones(self, options: Mapping[str, object] | None = None) -> bool:
        """Does every element (with these options) map the all-ones vector to itself?

        LayerNorm's mean, a constant shift and a mean/sum reduction commute with exactly such
        elements. Index kinds do (they copy coordinates); matrix kinds override when an option
        restricts them (``orthogonal`` with ``preserve: ones``).
        """
        return self.elementwise_equivariant

    def rotary_layout(self, options: Mapping[str, object] | None = None) -> str | None:
        """The coordinate pairs on which every element (with these options) acts as one complex
        scalar (a scaled 2x2 rotation): ``"half"`` (i with i + n/2) or ``"interleaved"`` (2i with
        2i + 1); None when the elements have no such form (the default).

        Such elements commute with every map of that form, which is what rotary position
        embeddings apply along the head dimension: ``rotate_half`` (a 90-degree turn of every
        pair) and multiplication by cos/sin tables that are constant on each pair. The static
        check lets a site through RoPE only when its kind answers the model's layout here.
        """
        return None

    def rotary_options(self, layout: str) -> Mapping[str, object] | None:
        """The options under which this kind's elements are the maps that commute with rotary
        position embeddings of ``layout`` (so that ``rotary_layout(options) == layout``), or None
        when no options make them so (the default). ``symdsl infer`` drafts such a site for the
        query/key basis of a RoPE model."""
        return None

    @property
    def permutes_positions(self) -> bool:
        """Does every element move whole positions, one to one (never mixing nor copying them)?

        Only then can another site be declared ``per`` this one: its per-position elements (one
        map per attention head) travel with their position. By default: an elementwise
        equivariant square kind, i.e. a permutation.
        """
        return self.elementwise_equivariant and self.square

    # -- what matchers, learned matching and the width lift ask of a kind ------------------
    #: The elements form a finite set (an assignment solves :meth:`maximize_trace`), so the
    #: correlation it is solved from may be formed in float32: rounding can only flip near-ties.
    discrete: bool = False
    #: Weight matching fits this kind's sites by least squares (g on primal, ``g^-T`` on dual
    #: occurrences, from Gram matrices, refined by L-BFGS) instead of :meth:`maximize_trace`.
    #: Maximising ``tr(g^T C)`` minimises ``||A - g B||`` only when g cannot change ``||g B||``;
    #: GL(n) can, so it needs the least-squares route (square float-matrix elements only).
    least_squares_fit: bool = False

    def maximize_trace(self, c: Tensor, *, options: Mapping[str, object] | None = None) -> Tensor:
        """The element g maximising ``tr(g^T c)`` for ``c`` ``(..., n_out, n_in)`` (batched).

        Weight matching's linear step for every kind without :attr:`least_squares_fit`. The
        default is :meth:`project`, which for kinds of norm-preserving elements is the same
        problem (``||g - c||^2 = const - 2 tr(g^T c)``); a kind whose projection differs
        overrides this.

        >>> from symdsl.groups.permutation import Permutation
        >>> Permutation().maximize_trace(torch.tensor([[0., 5.], [4., 1.]]))
        tensor([1, 0])
        """
        return self.project(c, options=options or {})

    def least_squares_solve(self, primal, dual, start: Tensor, *,
                            options: Mapping[str, object] | None = None) -> list[Tensor] | None:
        """Candidates for ``min_g sum_p ||A_p - g B_p||^2 + sum_d ||A_d - g^-T B_d||^2``, or None.

        Asked by weight matching for a :attr:`least_squares_fit` kind whose elements are a
        subgroup of GL(n). ``primal``/``dual`` (either may be None) carry the sums of the unfolded
        pairs' Gram matrices, each ``(..., n, n)`` batched like ``start``: ``ab`` = sum A B^T,
        ``bb`` = sum B B^T and, on the dual side, ``aa`` = sum A A^T; ``start`` is the current
        element. A kind returns elements of itself (the caller scores them, with ``start``, on the
        pairs themselves and keeps the best). Default None: the site is fitted over all of GL(n)
        (closed forms refined by L-BFGS), which only suits a kind that is all of GL(n).

        >>> from symdsl.groups.invertible import Invertible
        >>> Invertible().least_squares_solve(None, None, torch.eye(2)) is None
        True
        """
        return None

    def permutation_restriction(self, options: Mapping[str, object] | None = None) -> "GroupKind | None":
        """The kind to solve and learn this kind's sites with when only permutations are wanted.

        ``permutations_only`` (the paper's permutation baseline) asks every site for its
        permutations: a kind returns itself when its elements already are (copy) permutations,
        a kind whose elements share this kind's representation and are the permutations inside it
        (``orthogonal`` returns :class:`~symdsl.groups.permutation_matrix.PermutationMatrix`), or
        None when it has none to offer, and the site then keeps its starting element. The returned
        kind is used without options (a restriction bakes them in). Default: itself for
        elementwise equivariant kinds, None otherwise.

        >>> from symdsl.groups.invertible import Invertible
        >>> Invertible().permutation_restriction() is None
        True
        """
        return self if self.elementwise_equivariant else None

    def lift_rule(self, options: Mapping[str, object] | None = None, *, per: bool = False) -> str | None:
        """How :mod:`symdsl.width` widens a site of this kind to a larger size, or None (it cannot).

        ``"copy"``: a surjective copy map, the reader dividing by the copy count (exact behind an
        elementwise nonlinearity); ``"embed"``: an orthonormal embedding on both sides (a per-head
        map contracted with nothing in between); ``"residual"``: the mean-preserving, variance-
        keeping embedding of a LayerNorm residual stream. ``per``: the site is declared per
        another. Default None: the lift refuses the site and names it.

        >>> from symdsl.groups.invertible import Invertible
        >>> Invertible().lift_rule(per=True)
        'embed'
        """
        return None

    def __repr__(self) -> str:
        return f"<group kind {self.name!r}>"

    # ----------------------------------------------------------------- options

    def validate_options(self, options: Mapping[str, object] | None) -> None:
        """Raise ``ValueError`` naming any unknown option or disallowed value.

        >>> from symdsl.groups.orthogonal import Orthogonal
        >>> Orthogonal().validate_options({"preserve": "ones"})
        >>> Orthogonal().validate_options({"keep": "ones"})
        Traceback (most recent call last):
        ...
        ValueError: group kind 'orthogonal' has no option 'keep'; allowed options: preserve=('ones',)
        """
        if not options:
            return
        if not isinstance(options, Mapping):
            raise ValueError(f"options of group kind {self.name!r} must be a mapping, "
                             f"got {type(options).__name__}")
        allowed = ", ".join(f"{k}={v!r}" for k, v in self.options.items()) or "none"
        for key, value in options.items():
            if key not in self.options:
                raise ValueError(f"group kind {self.name!r} has no option {key!r}"
                                 f"{suggest(str(key), self.options)}; allowed options: {allowed}")
            if value not in self.options[key]:
                raise ValueError(f"option {key!r} of group kind {self.name!r} must be one of "
                                 f"{self.options[key]!r}, got {value!r}")

    # ----------------------------------------------------------------- sizes

    def _sizes(self, n_out: int, n_in: int | None) -> tuple[int, int]:
        """Check ``(n_out, n_in)`` for this kind; n_in defaults to n_out."""
        n_out = int(n_out)
        n_in = n_out if n_in is None else int(n_in)
        if n_out < 0 or n_in < 0:
            raise ValueError(f"sizes must be non-negative, got n_out={n_out}, n_in={n_in}")
        if self.square and n_in != n_out:
            raise ValueError(f"group kind {self.name!r} is square: n_in ({n_in}) "
                             f"must equal n_out ({n_out})")
        if n_out < n_in:
            raise ValueError(f"group kind {self.name!r} maps R^n_in -> R^n_out with "
                             f"n_out >= n_in, got n_out={n_out} < n_in={n_in}")
        return n_out, n_in

    def _check_n_in(self, g: Tensor, n_in: int | None) -> int:
        """Input size of g, checked against an explicit ``n_in`` if one is given."""
        have = g.shape[-1]
        if n_in is not None and n_in != have:
            raise ValueError(f"{self.name} element has n_in={have}, but n_in={n_in} was passed")
        return have

    # ----------------------------------------------------------------- contract

    @abc.abstractmethod
    def identity(self, n_out: int, n_in: int | None = None, batch=(), *, options=None,
                 dtype: torch.dtype = torch.float64, device=None) -> Tensor:
        """The identity element (rectangular kinds: the canonical embedding)."""

    @abc.abstractmethod
    def random(self, n_out: int, n_in: int | None = None, batch=(), *, options=None,
               generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float64, device=None) -> Tensor:
        """A random valid element, shape ``(*batch, n_out[, n_in])``."""

    @abc.abstractmethod
    def to_matrix(self, g: Tensor, *, dtype: torch.dtype | None = None,
                  n_in: int | None = None) -> Tensor:
        """Dense matrix ``(..., n_out, n_in)`` M with ``apply(g, x) == M @ x``."""

    @abc.abstractmethod
    def dual(self, g: Tensor, *, n_in: int | None = None) -> Tensor:
        """``g^{-T}`` (square) or ``pinv(g)^T`` (rectangular)."""

    @abc.abstractmethod
    def inverse(self, g: Tensor) -> Tensor:
        """The group inverse (square kinds); rectangular kinds raise ValueError."""

    @abc.abstractmethod
    def compose(self, a: Tensor, b: Tensor) -> Tensor:
        """``a ∘ b``: apply b first, then a (``to_matrix`` is ``A @ B``)."""

    @abc.abstractmethod
    def apply(self, g: Tensor, x: Tensor, dim: int, *, dual: bool = False,
              batch_dim: int | None = None) -> Tensor:
        """Transform axis ``dim`` of x by g (or by its dual)."""

    @abc.abstractmethod
    def contains(self, g, options=None, atol: float = 1e-8, *, n_in: int | None = None) -> bool:
        """Is g a valid element of this kind?"""

    @abc.abstractmethod
    def project(self, m: Tensor, *, options=None) -> Tensor:
        """The nearest valid element to a real matrix ``(..., n_out, n_in)``."""

    def parametrize(self, g0: Tensor, *, options=None, n_in: int | None = None):
        """A trainable :class:`symdsl.groups.parametrizations.Parametrization` starting at ``g0``.

        Learned matching trains these. A plugin kind that can be learned overrides this (a
        discrete kind can return :class:`~symdsl.groups.parametrizations.StraightThrough`); the
        default says that it cannot, and learned matching then reports the site.
        """
        raise NotImplementedError(f"group kind {self.name!r} has no trainable parametrisation "
                                  "(it does not implement GroupKind.parametrize)")


class MatrixGroupKind(GroupKind):
    """Shared behaviour of kinds whose elements are float matrices ``(..., n_out, n_in)``."""

    matrix_based = True

    def identity(self, n_out: int, n_in: int | None = None, batch=(), *, options=None,
                 dtype: torch.dtype = torch.float64, device=None) -> Tensor:
        """The identity matrix ``(*batch, n, n)`` (square kinds; a rectangular kind overrides this).

        >>> from symdsl.groups import get_group_kind
        >>> get_group_kind("invertible").identity(2, batch=(3,)).shape
        torch.Size([3, 2, 2])
        """
        self.validate_options(options)
        n, _ = self._sizes(n_out, n_in)
        return expand_batch(torch.eye(n, dtype=dtype, device=device), batch_shape(batch))

    def _check_element(self, g: Tensor, x: Tensor, dim: int, batch_dim: int | None) -> None:
        rank = 2 if batch_dim is None else 3
        if not isinstance(g, Tensor) or g.dim() != rank:
            what = "(n_out, n_in)" if batch_dim is None else "(B, n_out, n_in) with batch_dim"
            raise ValueError(f"{self.name} element must have shape {what}, "
                             f"got {tuple(getattr(g, 'shape', ()))}")
        if g.shape[-1] != x.shape[dim]:
            raise ValueError(f"{self.name} element expects size {g.shape[-1]} "
                             f"but x has size {x.shape[dim]} at dim {dim}")
        if batch_dim is not None and g.shape[0] != x.shape[batch_dim]:
            raise ValueError(f"{self.name} element has batch {g.shape[0]} but x has "
                             f"size {x.shape[batch_dim]} at batch_dim {batch_dim}")

    def to_matrix(self, g: Tensor, *, dtype: torch.dtype | None = None,
                  n_in: int | None = None) -> Tensor:
        """The element itself (it already is the matrix), cast to ``dtype`` if given.

        >>> from symdsl.groups.orthogonal import Orthogonal
        >>> Orthogonal().to_matrix(torch.eye(2)).shape
        torch.Size([2, 2])
        """
        self._check_n_in(g, n_in)
        return g if dtype is None else g.to(dtype)

    def compose(self, a: Tensor, b: Tensor) -> Tensor:
        """``a @ b`` (apply b first), batching by broadcasting.

        >>> from symdsl.groups.invertible import Invertible
        >>> k = Invertible()
        >>> k.compose(2 * torch.eye(2), 3 * torch.eye(2))
        tensor([[6., 0.],
                [0., 6.]])
        """
        if a.shape[-1] != b.shape[-2]:
            raise ValueError(f"cannot compose {self.name} elements of shapes "
                             f"{tuple(a.shape)} and {tuple(b.shape)}")
        return a @ b

    def apply(self, g: Tensor, x: Tensor, dim: int, *, dual: bool = False,
              batch_dim: int | None = None) -> Tensor:
        """Contract axis ``dim`` of x with g (or with ``dual(g)`` if ``dual``).

        g is ``(n_out, n_in)``; with ``batch_dim`` it is ``(B, n_out, n_in)`` and
        slice b of x along ``batch_dim`` uses ``g[b]``.  The result keeps x's
        dtype and device; only axis ``dim`` changes (to size n_out).

        >>> from symdsl.groups.stiefel import Stiefel
        >>> k = Stiefel()
        >>> k.apply(k.identity(3, 2), torch.ones(5, 2), dim=1).shape
        torch.Size([5, 3])
        """
        dim, batch_dim = normalize_axes(x, dim, batch_dim)
        self._check_element(g, x, dim, batch_dim)
        m = self.dual(g) if dual else g
        return apply_matrix(m, x, dim, batch_dim)


class IndexGroupKind(GroupKind):
    """Shared behaviour of kinds whose elements are index arrays ``(..., n_out)``.

    ``y[a] = x[g[a]]``: output a copies input ``g[a]``.
    """

    matrix_based = False

    def _infer_n_in(self, g: Tensor, n_in: int | None) -> int:
        """Input size of g when it is not given explicitly."""
        return self._check_n_in(g, n_in)

    def to_matrix(self, g: Tensor, *, dtype: torch.dtype | None = None,
                  n_in: int | None = None) -> Tensor:
        """Dense 0/1 matrix ``(..., n_out, n_in)`` with ``M[a, g[a]] = 1`` (float64 by default).

        >>> from symdsl.groups.permutation import Permutation
        >>> Permutation().to_matrix(torch.tensor([1, 0]))
        tensor([[0., 1.],
                [1., 0.]], dtype=torch.float64)
        """
        n_in = self._infer_n_in(g, n_in)
        m = torch.zeros(*g.shape, n_in, dtype=dtype or torch.float64, device=g.device)
        return m.scatter_(-1, g.long().unsqueeze(-1), 1)

    def compose(self, a: Tensor, b: Tensor) -> Tensor:
        """``a ∘ b`` as an index array: ``c[..., i] = b[..., a[..., i]]``.

        Batch dims broadcast.  ``to_matrix(c) == to_matrix(a) @ to_matrix(b)``.

        >>> from symdsl.groups.permutation import Permutation
        >>> Permutation().compose(torch.tensor([1, 2, 0]), torch.tensor([2, 0, 1]))
        tensor([0, 1, 2])
        """
        batch = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
        a = a.long().expand(*batch, a.shape[-1])            # (*batch, n_out)
        b = b.long().expand(*batch, b.shape[-1])            # (*batch, n_mid)
        return torch.gather(b, -1, a)

    def _check_element(self, g: Tensor, x: Tensor, dim: int, batch_dim: int | None) -> None:
        rank = 1 if batch_dim is None else 2
        if not is_index_array(g) or g.dim() != rank:
            what = "(n_out,)" if batch_dim is None else "(B, n_out) with batch_dim"
            raise ValueError(f"{self.name} element must be an integer tensor of shape {what}, "
                             f"got {getattr(g, 'dtype', type(g))} {tuple(getattr(g, 'shape', ()))}")
        if batch_dim is not None and g.shape[0] != x.shape[batch_dim]:
            raise ValueError(f"{self.name} element has batch {g.shape[0]} but x has "
                             f"size {x.shape[batch_dim]} at batch_dim {batch_dim}")

    def _dual_weight(self, g: Tensor, n_in: int) -> Tensor | None:
        """Per-output factor of the dual (None: the dual copies like g itself)."""
        return None

    def apply(self, g: Tensor, x: Tensor, dim: int, *, dual: bool = False,
              batch_dim: int | None = None) -> Tensor:
        """Gather along axis ``dim``: ``y[a] = x[g[a]]`` (dual: see ``dual``).

        g is ``(n_out,)``; with ``batch_dim`` it is ``(B, n_out)`` and slice b
        of x along ``batch_dim`` uses ``g[b]``.  Exact (no float matmul); keeps
        x's dtype and device.  Entries of g are trusted, not range-checked.

        >>> from symdsl.groups.permutation import Permutation
        >>> Permutation().apply(torch.tensor([2, 0, 1]), torch.tensor([10., 20., 30.]), 0)
        tensor([30., 10., 20.])
        """
        dim, batch_dim = normalize_axes(x, dim, batch_dim)
        self._check_element(g, x, dim, batch_dim)
        self._check_apply_size(g, x.shape[dim])
        weight = self._dual_weight(g.to(x.device), x.shape[dim]) if dual else None
        return apply_index(g, x, dim, batch_dim, weight)

    def _check_apply_size(self, g: Tensor, n_in: int) -> None:
        """Hook: reject an element whose input size cannot match x's axis."""
