"""Semi-permutations: surjective copy maps ``R^n_in -> R^n_out`` (``n_out >= n_in``).

They describe *widening* a layer by duplicating units (as in Net2Net-style
merges): output unit a is a copy of input unit ``g[a]`` and every input unit
is copied at least once.  An element is a LongTensor ``g`` of shape
``(..., n_out)`` with entries in ``range(n_in)``; ``to_matrix(g)[a, g[a]] = 1``.

The dual ``pinv(M)^T`` copies like g but divides each output by the number of
outputs sharing its input, so that the next layer sees the same sum.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from symdsl.groups.base import IndexGroupKind
from symdsl.groups.plumbing import (Tensor, batch_shape, expand_batch,
                                    generator_device, is_index_array, random_permutation)
from symdsl.groups.parametrizations import StraightThrough


def copy_counts(g: Tensor, n_in: int) -> Tensor:
    """How many outputs copy each input: ``(..., n_out) -> (..., n_in)`` int64.

    >>> copy_counts(torch.tensor([0, 1, 0, 0]), 2)
    tensor([3, 1])
    """
    g = g.long()
    counts = torch.zeros(*g.shape[:-1], n_in, dtype=torch.long, device=g.device)
    return counts.scatter_add_(-1, g, torch.ones_like(g))


class SemiPermutation(IndexGroupKind):
    """Surjective maps ``range(n_out) -> range(n_in)`` acting by copying units.

    >>> k = SemiPermutation()
    >>> g = torch.tensor([0, 1, 0])                 # 2 units widened to 3
    >>> k.apply(g, torch.tensor([4., 6.]), dim=0)
    tensor([4., 6., 4.])
    >>> k.apply(g, torch.tensor([4., 6.]), dim=0, dual=True)
    tensor([2., 6., 2.])
    """

    name = "semi_permutation"
    elementwise_equivariant = True
    discrete = True
    square = False
    self_dual = False
    options: dict[str, tuple] = {}

    def _infer_n_in(self, g: Tensor, n_in: int | None) -> int:
        # g alone does not say how many inputs there are; a valid (surjective)
        # element uses all of them, so the largest index tells.
        if n_in is not None:
            return int(n_in)
        return int(g.max()) + 1 if g.numel() else 0

    def _check_apply_size(self, g: Tensor, n_in: int) -> None:
        if g.shape[-1] < n_in:
            raise ValueError(f"semi_permutation with n_out={g.shape[-1]} cannot be surjective "
                             f"onto an axis of size {n_in}")

    def identity(self, n_out, n_in=None, batch=(), *, options=None,
                 dtype=torch.float64, device=None) -> Tensor:
        """The canonical copy map ``a -> a mod n_in`` (int64, ``dtype`` ignored).

        >>> SemiPermutation().identity(5, 2)
        tensor([0, 1, 0, 1, 0])
        """
        self.validate_options(options)
        n_out, n_in = self._sizes(n_out, n_in)
        if n_in == 0 and n_out > 0:
            raise ValueError("semi_permutation needs n_in >= 1 when n_out >= 1")
        g = torch.arange(n_out, device=device) % max(n_in, 1)
        return expand_batch(g, batch_shape(batch))

    def random(self, n_out, n_in=None, batch=(), *, options=None, generator=None,
               dtype=torch.float64, device=None) -> Tensor:
        """A random surjective copy map (int64, ``dtype`` ignored).

        Every input is used by a random permutation of ``range(n_in)``; the
        other ``n_out - n_in`` outputs copy random inputs; then the outputs
        are shuffled.

        >>> g = SemiPermutation().random(5, 3, generator=torch.Generator().manual_seed(0))
        >>> g.shape, sorted(set(g.tolist()))
        (torch.Size([5]), [0, 1, 2])
        """
        self.validate_options(options)
        n_out, n_in = self._sizes(n_out, n_in)
        if n_in == 0 and n_out > 0:
            raise ValueError("semi_permutation needs n_in >= 1 when n_out >= 1")
        batch = batch_shape(batch)
        cover = random_permutation(n_in, batch, generator, device)          # (*batch, n_in)
        extra = torch.randint(max(n_in, 1), (*batch, n_out - n_in), generator=generator,
                              device=generator_device(generator, device)).to(device)
        g = torch.cat([cover, extra], dim=-1)                                # (*batch, n_out)
        shuffle = random_permutation(n_out, batch, generator, device)        # (*batch, n_out)
        return g.gather(-1, shuffle)

    def _dual_weight(self, g: Tensor, n_in: int) -> Tensor:
        # Output a shares input g[a] with counts[g[a]] outputs: divide by that.
        counts = copy_counts(g, n_in)                                        # (..., n_in)
        return 1.0 / counts.gather(-1, g.long()).to(torch.float64)           # (..., n_out)

    def dual(self, g: Tensor, *, n_in: int | None = None) -> Tensor:
        """``pinv(M)^T`` as a DENSE float64 matrix ``(..., n_out, n_in)``.

        An index array cannot hold the ``1/count`` factors, so unlike the
        other index kind this returns a matrix.  ``D[a, g[a]] = 1 / count``
        where count is the number of outputs copying input ``g[a]``.  Use
        ``apply(g, x, dim, dual=True)`` to act with it without building it.

        >>> SemiPermutation().dual(torch.tensor([0, 1, 0]))
        tensor([[0.5000, 0.0000],
                [0.0000, 1.0000],
                [0.5000, 0.0000]], dtype=torch.float64)
        """
        m = self.to_matrix(g, n_in=n_in)                                     # (..., n_out, n_in)
        counts = m.sum(dim=-2, keepdim=True)                                 # (..., 1, n_in)
        return m / counts.clamp(min=1)   # unused inputs have an all-zero column: keep it 0

    def inverse(self, g: Tensor) -> Tensor:
        """Always raises ``ValueError``: a copy map has no group inverse.

        Use ``dual(g)`` (or ``apply(..., dual=True)``) for the weight on the
        other side of the layer.

        >>> SemiPermutation().inverse(torch.tensor([0, 0]))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: semi_permutation elements have no group inverse ...; use dual(g) / apply(..., dual=True) ...
        """
        raise ValueError("semi_permutation elements have no group inverse (they copy units); "
                         "use dual(g) / apply(..., dual=True) for the other side of the layer")

    def contains(self, g, options=None, atol: float = 1e-8, *, n_in: int | None = None) -> bool:
        """True if g is an integer array in ``range(n_in)`` using every input.

        ``n_in`` is required (keyword): g alone cannot tell unused inputs apart.

        >>> k = SemiPermutation()
        >>> k.contains(torch.tensor([0, 1, 0]), n_in=2), k.contains(torch.tensor([0, 0, 0]), n_in=2)
        (True, False)
        """
        self.validate_options(options)
        if n_in is None:
            raise ValueError("semi_permutation.contains needs n_in=... (the input size)")
        if not is_index_array(g) or g.shape[-1] < n_in:
            return False
        if g.numel() and (g.min() < 0 or g.max() >= n_in):
            return False
        return bool((copy_counts(g, n_in) > 0).all())

    def parametrize(self, g0: Tensor, *, options=None, n_in: int | None = None):
        """Hard surjective assignment forward, straight-through gradient.

        >>> SemiPermutation().parametrize(torch.tensor([0, 1, 0]), n_in=2).element()
        tensor([0, 1, 0])
        """
        if n_in is None:
            raise ValueError("semi_permutation.parametrize needs n_in=... (the input size)")
        return StraightThroughSemiPermutation(g0, n_in=n_in)

    def maximize_trace(self, c: Tensor, *, options=None) -> Tensor:
        """The SURJECTIVE copy map maximising ``tr(g^T c)``, c ``(..., n_out, n_in)``.

        Unlike :meth:`project` every input is used, so the result is a valid element: solved
        exactly as a square assignment of the outputs to n_in "must use" columns (the inputs)
        plus ``n_out - n_in`` "free" columns, each worth an output's best input.

        >>> SemiPermutation().maximize_trace(torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]]))
        tensor([0, 0, 1])
        """
        self.validate_options(options)
        if c.dim() > 2:
            return torch.stack([self.maximize_trace(m) for m in c])
        n_out, n_in = c.shape
        values = c.detach().double().cpu().numpy()
        best = values.max(axis=1, keepdims=True)       # (n_out, 1): a free output takes its best input
        square = np.concatenate([values, np.repeat(best, n_out - n_in, axis=1)], axis=1)   # (n_out, n_out)
        rows, cols = linear_sum_assignment(square, maximize=True)
        choice = np.where(cols < n_in, cols, values.argmax(axis=1)[rows])
        out = np.empty(n_out, dtype=np.int64)
        out[rows] = choice
        return torch.as_tensor(out, device=c.device)

    def project(self, m: Tensor, *, options=None) -> Tensor:
        """Each output row picks its largest input: ``m.argmax(-1)``, shape ``(..., n_out)``.

        This is the nearest copy map to m, but it is NOT guaranteed to be
        surjective (some input may be picked by no row); check with
        ``contains(g, n_in=...)`` if that matters.

        >>> SemiPermutation().project(torch.tensor([[0.9, 0.1], [0.2, 0.7], [0.6, 0.3]]))
        tensor([0, 1, 0])
        """
        self.validate_options(options)
        if m.dim() < 2:
            raise ValueError(f"semi_permutation.project needs matrices (..., n_out, n_in), "
                             f"got shape {tuple(m.shape)}")
        return m.argmax(dim=-1)


class StraightThroughSemiPermutation(StraightThrough):
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

    def __init__(self, g0: Tensor, *, n_in: int, dtype=torch.float64):
        super().__init__(SemiPermutation(), g0.long(), n_in=n_in, dtype=dtype)

    def dual_matrix(self, matrix: Tensor, hard: Tensor) -> Tensor:
        counts = hard.sum(-2, keepdim=True).clamp_min(1.0)           # (..., 1, n_in): copies of each input
        return matrix / counts
