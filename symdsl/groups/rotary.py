"""Per-head query/key maps that commute with rotary position embeddings (RoPE).

With RoPE a head's score is ``q_t . k_s = x^T Wq^T R(s - t) Wk x``, where ``R(t)`` is
block-diagonal with one 2x2 rotation by ``t * theta_i`` per frequency pair i. A map G on queries
with ``G^-T`` on keys keeps every score iff G commutes with every ``R(t)``; for distinct
frequencies these are exactly the block-diagonal maps with one *scaled rotation* per pair: one
nonzero complex number ``z_i = r_i e^{i phi_i}`` per pair, acting on the pair's coordinates
``(x_a, x_b)`` as ``x_a + i x_b -> z_i (x_a + i x_b)``. Its dual ``G^-T`` is ``1 / conj(z_i)``
per pair (the same angle, the inverse scale).

Elements are dense float matrices ``(..., n, n)`` (n = head_dim, even) so that the matrix
plumbing (compose, apply, the dense action) works unchanged. Option ``pairs`` names the pair
layout: ``half`` (default; Hugging Face ``rotate_half``, coordinate i pairs with i + n/2:
Llama, Mistral, Qwen, Gemma, GPT-NeoX) or ``interleaved`` (2i with 2i + 1: GPT-J).

>>> k = Rotary()
>>> g = k.random(4, generator=torch.Generator().manual_seed(0))
>>> k.contains(g), k.contains(g, {"pairs": "interleaved"})
(True, False)
"""
from __future__ import annotations

import math
from typing import Mapping

import torch

from symdsl.groups.base import MatrixGroupKind
from symdsl.groups.parametrizations import Parametrization
from symdsl.groups.plumbing import Tensor, batch_shape, generator_device, is_float_matrix, tolerance

LAYOUTS = ("half", "interleaved")
MAX_CONDITION = 1e12      # largest ratio of two pairs' scales an element may have (its condition number)
SCALE_RANGE = 1e5         # weight matching keeps every scale within [1/SCALE_RANGE, SCALE_RANGE]


def layout(options: Mapping[str, object] | None) -> str:
    """The pair layout an options mapping asks for (default ``half``)."""
    return str((options or {}).get("pairs", "half"))


def pair_indices(n: int, pairs: str = "half", device=None) -> tuple[Tensor, Tensor]:
    """``(first, second)``: the two coordinates of each of the n/2 frequency pairs.

    >>> pair_indices(6)
    (tensor([0, 1, 2]), tensor([3, 4, 5]))
    >>> pair_indices(6, "interleaved")
    (tensor([0, 2, 4]), tensor([1, 3, 5]))
    """
    if n % 2:
        raise ValueError(f"group kind 'rotary' needs an even size (head_dim), got {n}")
    idx = torch.arange(n // 2, device=device)
    if pairs == "half":
        return idx, idx + n // 2
    return 2 * idx, 2 * idx + 1


def from_complex(z: Tensor, n: int, pairs: str = "half") -> Tensor:
    """The dense element ``(..., n, n)`` of one complex number per pair, given as ``(..., n/2, 2)``
    (real, imaginary): block ``[[re, -im], [im, re]]`` on each pair (differentiable).

    >>> from_complex(torch.tensor([[0.0, 2.0]]), 2)
    tensor([[ 0., -2.],
            [ 2.,  0.]])
    """
    first, second = pair_indices(n, pairs, z.device)
    re, im = z[..., 0], z[..., 1]                           # (..., n/2)
    m = z.new_zeros(*z.shape[:-2], n, n)
    m[..., first, first] = re
    m[..., second, second] = re
    m[..., second, first] = im
    m[..., first, second] = -im
    return m


def to_complex(m: Tensor, pairs: str = "half") -> Tensor:
    """Per pair, the scaled rotation nearest to m's 2x2 block, as ``(..., n/2, 2)`` (re, im).

    The scaled rotations ``a I + b J`` are a linear subspace of 2x2 matrices, so the nearest one
    in Frobenius norm is the orthogonal projection: ``a = (m11 + m22) / 2``, ``b = (m21 - m12) / 2``.

    >>> to_complex(torch.tensor([[1.0, -2.0], [2.0, 1.0]]))
    tensor([[1., 2.]])
    """
    first, second = pair_indices(m.shape[-1], pairs, m.device)
    re = (m[..., first, first] + m[..., second, second]) / 2
    im = (m[..., second, first] - m[..., first, second]) / 2
    return torch.stack([re, im], dim=-1)


def _row_scales(g: Tensor) -> Tensor:
    """``r_i^2`` per row (``g g^T = diag(r^2)`` for a scaled-rotation block matrix), ``(..., n, 1)``."""
    return (g * g).sum(-1, keepdim=True)


class Rotary(MatrixGroupKind):
    """One scaled 2x2 rotation per RoPE frequency pair: the per-head q/k maps that commute with RoPE.

    >>> k = Rotary()
    >>> g = k.random(4, batch=(2,), options={"pairs": "interleaved"}, generator=torch.Generator().manual_seed(0))
    >>> torch.allclose(k.compose(g, k.inverse(g)), torch.eye(4, dtype=torch.float64).expand(2, 4, 4))
    True
    """

    name = "rotary"
    square = True
    self_dual = False
    options = {"pairs": LAYOUTS}
    # a scale changes the norm of what it acts on: fitted by least squares, like invertible maps
    least_squares_fit = True

    def rotary_layout(self, options=None) -> str:
        # one complex scalar per pair: commutes with rotate_half and with pair-constant scalings
        return layout(options)

    def rotary_options(self, layout_name: str) -> dict | None:
        """``{}`` for the default ``half`` layout, ``{"pairs": layout}`` otherwise."""
        if layout_name not in LAYOUTS:
            return None
        return {} if layout_name == "half" else {"pairs": layout_name}

    def permutation_restriction(self, options=None) -> None:
        """None: a rotary map holds no permutation but the identity (a quarter turn is signed)."""
        return None

    def lift_rule(self, options=None, *, per: bool = False) -> None:
        """None: RoPE's frequencies depend on head_dim, so a wider head is not the same RoPE model."""
        return None

    def maximize_trace(self, c: Tensor, *, options=None) -> Tensor:
        """Refused: ``tr(g^T C)`` is unbounded over scaled rotations (weight matching uses least squares).

        >>> Rotary().maximize_trace(torch.eye(2))
        Traceback (most recent call last):
        ...
        ValueError: tr(g^T C) has no maximum over group kind 'rotary' (its scales are unbounded); fit it by least squares (least_squares_fit)
        """
        raise ValueError("tr(g^T C) has no maximum over group kind 'rotary' (its scales are unbounded); "
                         "fit it by least squares (least_squares_fit)")

    def random(self, n_out, n_in=None, batch=(), *, options=None, generator=None,
               dtype=torch.float64, device=None) -> Tensor:
        """Scales uniform in [0.5, 2] and angles uniform in [-pi, pi), one per pair.

        >>> Rotary().random(6, batch=(3,), generator=torch.Generator().manual_seed(0)).shape
        torch.Size([3, 6, 6])
        """
        self.validate_options(options)
        n, _ = self._sizes(n_out, n_in)
        pair_indices(n)                                            # even size
        batch = batch_shape(batch)
        where = generator_device(generator, device)
        u = torch.rand(*batch, n // 2, 2, generator=generator, dtype=dtype, device=where).to(device)
        scale, angle = 0.5 + 1.5 * u[..., 0], math.pi * (2 * u[..., 1] - 1)
        z = torch.stack([scale * torch.cos(angle), scale * torch.sin(angle)], dim=-1)
        return from_complex(z, n, layout(options))

    def dual(self, g: Tensor, *, n_in: int | None = None) -> Tensor:
        """``g^-T``: each pair's ``r R`` becomes ``R / r``, i.e. ``diag(1 / r^2) g`` (any layout).

        >>> Rotary().dual(torch.tensor([[0.0, -2.0], [2.0, 0.0]]))
        tensor([[ 0.0000, -0.5000],
                [ 0.5000,  0.0000]])
        """
        self._check_n_in(g, n_in)
        return g / _row_scales(g)

    def inverse(self, g: Tensor) -> Tensor:
        """``g^-1 = g^T diag(1 / r^2)``.

        >>> Rotary().inverse(torch.tensor([[0.0, -2.0], [2.0, 0.0]]))
        tensor([[ 0.0000,  0.5000],
                [-0.5000,  0.0000]])
        """
        return self.dual(g).mT

    def contains(self, g, options=None, atol: float = 1e-8, *, n_in: int | None = None) -> bool:
        """Square, even, finite, one scaled rotation per pair of the layout, scales with ratio < 1e12.

        ``atol`` is relative to the largest entry and raised to what g's dtype can resolve.

        >>> k = Rotary()
        >>> k.contains(torch.eye(4)), k.contains(torch.diag(torch.tensor([1.0, 2.0, 1.0, 2.0])))
        (True, True)
        >>> k.contains(torch.diag(torch.tensor([1.0, 2.0, 2.0, 1.0]))), k.contains(torch.zeros(4, 4))
        (False, False)
        """
        self.validate_options(options)
        if not is_float_matrix(g) or g.shape[-1] != g.shape[-2] or g.shape[-1] % 2:
            return False
        n = g.shape[-1]
        if (n_in is not None and n_in != n) or not bool(torch.isfinite(g).all()):
            return False
        if n == 0:
            return True
        z = to_complex(g, layout(options))
        biggest = float(g.abs().max())
        tol = tolerance(atol, g.dtype, n) * max(biggest, 1.0)
        if not bool(((g - from_complex(z, n, layout(options))).abs() <= tol).all()):
            return False
        scale = z.norm(dim=-1)                                     # (..., n/2)
        return bool((scale > 0).all()) and bool((scale.amax(-1) < MAX_CONDITION * scale.amin(-1)).all())

    def project(self, m: Tensor, *, options=None) -> Tensor:
        """The nearest element in Frobenius norm: per pair, the scaled-rotation part of m's 2x2 block.

        Raises ``ValueError`` when a pair's block has no such part (the nearest point would be 0).

        >>> Rotary().project(torch.tensor([[3.0, -1.0], [1.0, 1.0]]))
        tensor([[ 2., -1.],
                [ 1.,  2.]])
        """
        self.validate_options(options)
        if m.dim() < 2 or m.shape[-1] != m.shape[-2]:
            raise ValueError(f"rotary.project needs square matrices (..., n, n), got shape {tuple(m.shape)}")
        g = from_complex(to_complex(m, layout(options)), m.shape[-1], layout(options))
        if not self.contains(g, options):
            raise ValueError("matrix has no usable rotary element nearby: a pair's scaled-rotation part "
                             "is zero (or the scales differ by more than 1e12)")
        return g

    def parametrize(self, g0: Tensor, *, options=None, n_in: int | None = None):
        """A trainable log-scale and angle per pair (batched over g0's leading, ``per``, dims).

        >>> p = Rotary().parametrize(torch.eye(4, dtype=torch.float64))
        >>> [tuple(x.shape) for x in p.parameters()], bool(torch.equal(p.element(), torch.eye(4, dtype=torch.float64)))
        ([(2,), (2,)], True)
        """
        self.validate_options(options)
        return LogPolarRotary(g0, pairs=layout(options))

    def least_squares_solve(self, primal, dual, start: Tensor, *, options=None) -> list[Tensor]:
        """Per pair, the complex z minimising ``sum_p ||A - z B||^2 + sum_d ||A - B / conj(z)||^2``.

        In polar form ``z = r e^{i phi}``, with ``s = sum a conj(b)`` and ``n = sum |b|^2`` per side
        (from the Gram sums), the objective is
        ``r^2 n_p + n_d / r^2 - 2 Re(e^{i phi} conj(r s_p + s_d / r))``: the best angle is
        ``arg(r s_p + s_d / r)``, which leaves one smooth function of ``t = log r^2``,
        ``n_p e^t + n_d e^-t - 2 sqrt(|s_p|^2 e^t + |s_d|^2 e^-t + 2 Re(s_p conj(s_d)))``, minimised
        on a grid and polished by safeguarded Newton steps. Returned with the closed forms (the
        primal fit ``s_p / n_p``, the dual fit and the linearised joint fit
        ``(s_p + s_d') / (n_p + m_d)``), each exact on a recovery, for the caller to score.
        """
        pairs = layout(options)
        n = start.shape[-1]
        first, second = pair_indices(n, pairs, start.device)

        def side(gram, attr):
            m = getattr(gram, attr)
            re = m[..., first, first] + m[..., second, second]
            im = m[..., second, first] - m[..., first, second]
            return torch.complex(re, im)

        zero = torch.zeros(start.shape[:-2] + (n // 2,), dtype=start.dtype, device=start.device)
        s_p = side(primal, "ab") if primal is not None else torch.complex(zero, zero)
        n_p = side(primal, "bb").real if primal is not None else zero
        s_d = side(dual, "ab") if dual is not None else torch.complex(zero, zero)
        n_d = side(dual, "bb").real if dual is not None else zero
        m_d = side(dual, "aa").real if dual is not None and dual.aa is not None else zero
        z0 = to_complex(start, pairs)
        z0 = torch.complex(z0[..., 0], z0[..., 1])

        fits = []
        tiny = torch.finfo(start.dtype).tiny
        if primal is not None:
            fits.append(s_p / n_p.clamp_min(tiny))
        if dual is not None:
            w = s_d / n_d.clamp_min(tiny)
            fits.append(w / (w.abs() ** 2).clamp_min(tiny))
            fits.append((s_p + s_d) / (n_p + m_d).clamp_min(tiny))

        p2, d2, c = s_p.abs() ** 2, s_d.abs() ** 2, (s_p * s_d.conj()).real
        lo, hi = -2 * math.log(SCALE_RANGE), 2 * math.log(SCALE_RANGE)

        def value(t, *, k=False):        # the objective at t = log r^2 (k: t has a trailing axis of candidates)
            np_, nd_, p2_, d2_, c_ = (x[..., None] if k else x for x in (n_p, n_d, p2, d2, c))
            e = torch.exp(t)
            return np_ * e + nd_ / e - 2 * torch.sqrt((p2_ * e + d2_ / e + 2 * c_).clamp_min(0))

        # t = log r^2: candidates (current, closed forms, a grid), the best polished by Newton
        ts = [torch.log((z.abs() ** 2).clamp_min(tiny)) for z in [z0, *fits]]
        grid = torch.linspace(lo, hi, 241, dtype=start.dtype, device=start.device)
        cand = torch.cat([torch.stack(ts, -1), grid.expand(*zero.shape, -1)], -1).clamp(lo, hi)   # (..., n/2, K)
        t = cand.gather(-1, value(cand, k=True).argmin(-1, keepdim=True)).squeeze(-1)
        value_b = value(t)
        for _ in range(40):
            e = torch.exp(t)
            s = (p2 * e + d2 / e + 2 * c).clamp_min(tiny)
            ds, dds = p2 * e - d2 / e, p2 * e + d2 / e
            grad = n_p * e - n_d / e - ds / s.sqrt()
            curv = n_p * e + n_d / e - dds / s.sqrt() + ds ** 2 / (2 * s ** 1.5)
            step = torch.where(curv > 0, -grad / curv.clamp_min(tiny), -grad.sign() * 0.1)
            step = step.clamp(-1.0, 1.0)
            for _ in range(6):                                    # halve until the value does not rise
                trial = (t + step).clamp(lo, hi)
                trial_value = value(trial)
                ok = trial_value <= value_b
                if bool(ok.all()):
                    break
                step = torch.where(ok, step, step / 2)
            ok = trial_value <= value_b
            t, value_b = torch.where(ok, trial, t), torch.where(ok, trial_value, value_b)
        r = torch.exp(t / 2)
        v = r * s_p + s_d / r
        direction = torch.where(v.abs() > 0, v / v.abs().clamp_min(tiny), z0 / z0.abs().clamp_min(tiny))
        best = r * direction
        out = []
        for z in [best, *fits]:
            scale = z.abs()
            clipped = torch.where(scale > 0, z / scale.clamp_min(tiny), z0 / z0.abs().clamp_min(tiny))
            z = clipped * scale.clamp(1 / SCALE_RANGE, SCALE_RANGE)
            g = from_complex(torch.stack([z.real, z.imag], -1), n, pairs)
            if self.contains(g, options):
                out.append(g)
        return out


class LogPolarRotary(Parametrization):
    """``z = exp(log_scale + i angle)`` per pair; primal uses z, dual ``1 / conj(z) = exp(-log_scale + i angle)``.

    >>> g0 = Rotary().random(4, batch=(2,), generator=torch.Generator().manual_seed(0))
    >>> p = LogPolarRotary(g0)
    >>> primal, dual = p.dense()
    >>> torch.allclose(primal, g0), torch.allclose(dual, Rotary().dual(g0))
    (True, True)
    """

    def __init__(self, g0: Tensor, *, pairs: str = "half"):
        super().__init__()
        self.pairs = pairs
        self.n = g0.shape[-1]
        z = to_complex(g0.detach(), pairs)                         # (..., n/2, 2)
        self.log_scale = torch.nn.Parameter(torch.log(z.norm(dim=-1)))
        self.angle = torch.nn.Parameter(torch.atan2(z[..., 1], z[..., 0]))

    def matrix(self, log_scale: Tensor) -> Tensor:
        scale = torch.exp(log_scale)
        z = torch.stack([scale * torch.cos(self.angle), scale * torch.sin(self.angle)], dim=-1)
        return from_complex(z, self.n, self.pairs)

    def dense(self):
        return self.matrix(self.log_scale), self.matrix(-self.log_scale)

    def element(self) -> Tensor:
        with torch.no_grad():
            return self.matrix(self.log_scale).detach().clone()
