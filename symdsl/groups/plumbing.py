"""Tensor plumbing that group kinds share: batch shapes, tolerances, element checks, and
applying a matrix or an index array along one axis (optionally batched along another)."""
from __future__ import annotations

import math
from typing import Sequence

import torch

Tensor = torch.Tensor


def batch_shape(batch: int | Sequence[int]) -> tuple[int, ...]:
    """Normalise a ``batch`` argument (an int or a sequence of ints) to a tuple.

    >>> batch_shape(3), batch_shape((2, 5)), batch_shape(())
    ((3,), (2, 5), ())
    """
    if isinstance(batch, int):
        return (batch,)
    return tuple(int(b) for b in batch)


def generator_device(generator: torch.Generator | None, device) -> torch.device | str | None:
    """Where random numbers must be drawn: a generator only draws on its own device."""
    return generator.device if generator is not None else device


def random_permutation(n: int, batch: tuple[int, ...], generator=None, device=None) -> Tensor:
    """Uniform random permutations of ``range(n)``, shape ``(*batch, n)``, int64.

    ``torch.randperm`` cannot batch, so we argsort i.i.d. uniforms instead
    (every ordering is equally likely).

    >>> p = random_permutation(4, (2,), torch.Generator().manual_seed(0))
    >>> p.shape, sorted(p[0].tolist())
    (torch.Size([2, 4]), [0, 1, 2, 3])
    """
    keys = torch.rand(*batch, n, generator=generator, dtype=torch.float64,
                      device=generator_device(generator, device))
    return keys.argsort(dim=-1).to(device)


def tolerance(atol: float, dtype: torch.dtype, n: int) -> float:
    """``atol``, raised to what rounding in ``dtype`` can reach for size ``n``.

    Without this a float32 orthogonal matrix could never pass ``atol=1e-8``.
    """
    return max(atol, 10 * max(n, 1) * torch.finfo(dtype).eps)


def all_close(a: Tensor, b: Tensor | float, tol: float) -> bool:
    """``|a - b| <= tol`` everywhere (broadcasting; NaN counts as far)."""
    return bool(((a - b).abs() <= tol).all())


def is_float_matrix(g) -> bool:
    """A real floating tensor with at least two dims."""
    return isinstance(g, Tensor) and g.is_floating_point() and g.dim() >= 2


def is_index_array(g) -> bool:
    """An integer (not bool) tensor with at least one dim."""
    return (isinstance(g, Tensor) and g.dim() >= 1 and not g.is_floating_point()
            and not g.is_complex() and g.dtype != torch.bool)


def expand_batch(g: Tensor, batch: tuple[int, ...]) -> Tensor:
    """Repeat a single element over ``batch`` leading dims (a real copy, not a view)."""
    return g.expand(*batch, *g.shape).clone()


def normalize_axes(x: Tensor, dim: int, batch_dim: int | None) -> tuple[int, int | None]:
    """Turn possibly negative ``dim``/``batch_dim`` into valid non-negative axes of x."""
    nd = x.dim()

    def norm(d: int, what: str) -> int:
        if not -nd <= d < nd:
            raise ValueError(f"{what}={d} is out of range for a tensor with {nd} dims")
        return d % nd

    dim = norm(dim, "dim")
    if batch_dim is None:
        return dim, None
    batch_dim = norm(batch_dim, "batch_dim")
    if batch_dim == dim:
        raise ValueError(f"batch_dim and dim must be different axes, both are {dim}")
    return dim, batch_dim


def apply_matrix(m: Tensor, x: Tensor, dim: int, batch_dim: int | None) -> Tensor:
    """Contract axis ``dim`` of x with m: that axis becomes ``m @ axis``.

    m is ``(n_out, n_in)``, or ``(B, n_out, n_in)`` with slice b of x along
    ``batch_dim`` using ``m[b]``.  Axes must already be non-negative.
    """
    m = m.to(dtype=x.dtype, device=x.device)
    if batch_dim is None:
        # (..., n_in) @ (n_in, n_out) -> (..., n_out), then put the axis back.
        return (x.movedim(dim, -1) @ m.mT).movedim(-1, dim)
    xb = x.movedim((batch_dim, dim), (0, -1))              # (B, *rest, n_in)
    rest = xb.shape[1:-1]
    flat = xb.reshape(xb.shape[0], math.prod(rest), xb.shape[-1])  # (B, K, n_in)
    y = torch.bmm(flat, m.mT)                               # (B, K, n_out)
    y = y.reshape(xb.shape[0], *rest, m.shape[-2])          # (B, *rest, n_out)
    return y.movedim((0, -1), (batch_dim, dim))


def apply_index(idx: Tensor, x: Tensor, dim: int, batch_dim: int | None,
                weight: Tensor | None = None) -> Tensor:
    """Along axis ``dim``: ``y[a] = x[idx[a]] * weight[a]`` (weight optional).

    idx is ``(n_out,)``, or ``(B, n_out)`` with slice b of x along ``batch_dim``
    using ``idx[b]``; weight has idx's shape.  Axes must be non-negative.
    """
    idx = idx.to(device=x.device, dtype=torch.long)
    if batch_dim is None:
        y = x.index_select(dim, idx)                        # axis dim now n_out long
        if weight is not None:
            shape = [1] * x.dim()
            shape[dim] = -1
            y = y * weight.to(dtype=x.dtype, device=x.device).view(shape)
        return y
    xb = x.movedim((batch_dim, dim), (0, -1))              # (B, *rest, n_in)
    view = (idx.shape[0],) + (1,) * (xb.dim() - 2) + (idx.shape[-1],)
    full = xb.shape[:-1] + (idx.shape[-1],)                 # (B, *rest, n_out)
    y = torch.gather(xb, -1, idx.view(view).expand(full))
    if weight is not None:
        y = y * weight.to(dtype=x.dtype, device=x.device).view(view)
    return y.movedim((0, -1), (batch_dim, dim))
