"""Tests of symdsl.groups: every kind against dense-matrix references."""
from __future__ import annotations

import doctest
import importlib
import itertools

import pytest
import scipy.linalg
import torch

from symdsl.groups import BUILTIN_GROUP_KINDS as GROUP_KINDS, GroupKind, get_group_kind

F64 = torch.float64
NAMES = ["permutation", "semi_permutation", "orthogonal", "stiefel", "invertible", "rotary"]


@pytest.fixture(params=NAMES)
def kind(request) -> GroupKind:
    return get_group_kind(request.param)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def sizes(kind: GroupKind) -> tuple[int, int]:
    """(n_out, n_in) used for each kind: rectangular kinds actually widen."""
    return (4, 4) if kind.square else (6, 4)


def matrix(kind: GroupKind, g: torch.Tensor, n_in: int) -> torch.Tensor:
    return kind.to_matrix(g, dtype=F64, n_in=n_in)


def dual_matrix(kind: GroupKind, g: torch.Tensor, n_in: int) -> torch.Tensor:
    """dual(g) as a dense matrix, whatever representation the kind returns."""
    d = kind.dual(g, n_in=n_in)
    return d.to(F64) if d.is_floating_point() else kind.to_matrix(d, dtype=F64, n_in=n_in)


def reference_dual(m: torch.Tensor) -> torch.Tensor:
    """m^{-T} for square m, pinv(m)^T otherwise, straight from torch.linalg."""
    if m.shape[-1] == m.shape[-2]:
        return torch.linalg.inv(m).mT
    return torch.linalg.pinv(m).mT


def dense_apply(m: torch.Tensor, x: torch.Tensor, dim: int) -> torch.Tensor:
    """Reference: axis dim of x becomes m @ axis (einsum on a moved axis)."""
    y = torch.einsum("oi,...i->...o", m.to(x.dtype), x.movedim(dim, -1))
    return y.movedim(-1, dim)


def test_registry_holds_builtins_with_contract_flags():
    assert set(NAMES) <= set(GROUP_KINDS)
    flags = {n: (k.square, k.self_dual, k.matrix_based) for n, k in GROUP_KINDS.items()}
    assert flags["permutation"] == (True, True, False)
    assert flags["semi_permutation"] == (False, False, False)
    assert flags["orthogonal"] == (True, True, True)
    assert flags["stiefel"] == (False, True, True)    # dual(g) = pinv(g)^T = g
    assert flags["invertible"] == (True, False, True)
    assert GROUP_KINDS["orthogonal"].options == {"preserve": ("ones",)}
    assert flags["rotary"] == (True, False, True)
    assert GROUP_KINDS["rotary"].options == {"pairs": ("half", "interleaved")}
    assert all(GROUP_KINDS[n].options == {} for n in NAMES if n not in ("orthogonal", "rotary"))


def test_identity_acts_as_identity(kind):
    n_out, n_in = sizes(kind)
    e = kind.identity(n_out, n_in)
    x = torch.randn(3, n_in, 2, generator=gen(), dtype=F64)
    y = kind.apply(e, x, dim=1)
    if kind.square:
        assert torch.equal(matrix(kind, e, n_in), torch.eye(n_in, dtype=F64))
        torch.testing.assert_close(y, x)
    else:
        # canonical embedding: the first n_in outputs are the inputs
        torch.testing.assert_close(y[:, :n_in], x)
    batched = kind.identity(n_out, n_in, batch=(2, 3))
    assert torch.equal(batched[1, 2], e)


def test_rectangular_identities_are_canonical():
    assert torch.equal(get_group_kind("stiefel").identity(3, 2), torch.eye(3, 2, dtype=F64))
    assert get_group_kind("semi_permutation").identity(5, 2).tolist() == [0, 1, 0, 1, 0]


def test_square_kinds_reject_rectangular_sizes(kind):
    if kind.square:
        with pytest.raises(ValueError, match="square"):
            kind.identity(4, 3)
        with pytest.raises(ValueError, match="square"):
            kind.random(4, 3)
    else:
        with pytest.raises(ValueError, match="n_out >= n_in"):
            kind.identity(3, 4)


def test_random_elements_are_contained(kind):
    n_out, n_in = sizes(kind)
    for batch in [(), (3,), (2, 2)]:
        g = kind.random(n_out, n_in, batch=batch, generator=gen(1))
        expected = batch + ((n_out,) if not kind.matrix_based else (n_out, n_in))
        assert g.shape == expected
        assert kind.contains(g, n_in=n_in)
    # seeded -> reproducible
    assert torch.equal(kind.random(n_out, n_in, generator=gen(5)),
                       kind.random(n_out, n_in, generator=gen(5)))


def test_contains_rejects_invalid_elements():
    k = get_group_kind
    assert not k("permutation").contains(torch.tensor([0, 0, 2, 3]))
    assert not k("permutation").contains(torch.tensor([0.0, 1.0]))
    assert not k("semi_permutation").contains(torch.tensor([0, 1, 1, 0]), n_in=3)  # 2 unused
    assert not k("semi_permutation").contains(torch.tensor([0, 1, 5]), n_in=2)     # out of range
    with pytest.raises(ValueError, match="n_in"):
        k("semi_permutation").contains(torch.tensor([0, 1]))
    assert not k("orthogonal").contains(2 * torch.eye(3, dtype=F64))
    assert not k("stiefel").contains(torch.ones(4, 2, dtype=F64))
    assert not k("stiefel").contains(torch.eye(2, 4, dtype=F64))
    assert not k("invertible").contains(torch.diag(torch.tensor([1.0, 1e-14], dtype=F64)))
    assert not k("invertible").contains(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
    assert k("orthogonal").contains(k("orthogonal").random(5, dtype=torch.float32))


def test_compose_matches_matrix_product(kind):
    n_out, n_in = sizes(kind)
    n_top = n_out + 2 if not kind.square else n_out
    a = kind.random(n_top, n_out, batch=(3,), generator=gen(2))   # maps R^n_out -> R^n_top
    b = kind.random(n_out, n_in, batch=(3,), generator=gen(3))
    c = kind.compose(a, b)
    torch.testing.assert_close(matrix(kind, c, n_in), matrix(kind, a, n_out) @ matrix(kind, b, n_in))
    # a single element composes with a batch by broadcasting
    c0 = kind.compose(a[0], b)
    torch.testing.assert_close(matrix(kind, c0, n_in), matrix(kind, a[0], n_out) @ matrix(kind, b, n_in))


@pytest.mark.parametrize("dual", [False, True])
@pytest.mark.parametrize("dim", [0, 1, 2, -1, -3])
def test_apply_matches_dense_reference(kind, dim, dual):
    n_out, n_in = sizes(kind)
    g = kind.random(n_out, n_in, generator=gen(4))
    shape = [3, 5, 2]
    shape[dim] = n_in
    x = torch.randn(*shape, generator=gen(5), dtype=F64)
    m = matrix(kind, g, n_in)
    ref = dense_apply(reference_dual(m) if dual else m, x, dim)
    torch.testing.assert_close(kind.apply(g, x, dim, dual=dual), ref)


@pytest.mark.parametrize("dual", [False, True])
@pytest.mark.parametrize("batch_dim,dim", [(0, 1), (0, 2), (1, 0), (2, 1), (-1, -2), (1, -1)])
def test_batched_apply_matches_loop(kind, batch_dim, dim, dual):
    n_out, n_in = sizes(kind)
    B = 3
    g = kind.random(n_out, n_in, batch=(B,), generator=gen(6))
    shape = [2, 2, 2]
    shape[batch_dim], shape[dim] = B, n_in
    x = torch.randn(*shape, generator=gen(7), dtype=F64)
    y = kind.apply(g, x, dim, dual=dual, batch_dim=batch_dim)

    bd, d = batch_dim % 3, dim % 3
    d_slice = d if d < bd else d - 1          # dim index once batch_dim is removed
    slices = [kind.apply(g[b], x.select(bd, b), d_slice, dual=dual) for b in range(B)]
    torch.testing.assert_close(y, torch.stack(slices, dim=bd))
    # and against the dense matrices, to be sure the loop itself is right
    for b in range(B):
        m = matrix(kind, g[b], n_in)
        ref = dense_apply(reference_dual(m) if dual else m, x.select(bd, b), d_slice)
        torch.testing.assert_close(y.select(bd, b), ref)


def test_apply_rejects_mismatched_shapes(kind):
    n_out, n_in = sizes(kind)
    g = kind.random(n_out, n_in, batch=(2,), generator=gen())
    x = torch.randn(3, n_out + 1, dtype=F64)
    with pytest.raises(ValueError):
        kind.apply(g[0], x, dim=1)                          # axis too long for g
    with pytest.raises(ValueError):
        kind.apply(g, torch.randn(3, n_in, dtype=F64), dim=1, batch_dim=0)  # B=2 vs 3
    with pytest.raises(ValueError):
        kind.apply(g, torch.randn(2, n_in, dtype=F64), dim=1, batch_dim=1)  # same axis
    with pytest.raises(ValueError):
        kind.apply(g, torch.randn(2, n_in, dtype=F64), dim=1)                # batch without batch_dim


def test_square_inverse_and_rectangular_refusal(kind):
    n_out, n_in = sizes(kind)
    g = kind.random(n_out, n_in, batch=(2,), generator=gen(8))
    if not kind.square:
        with pytest.raises(ValueError, match="dual"):
            kind.inverse(g)
        return
    eye = torch.eye(n_in, dtype=F64).expand(2, n_in, n_in)
    torch.testing.assert_close(matrix(kind, kind.compose(g, kind.inverse(g)), n_in), eye)
    torch.testing.assert_close(matrix(kind, kind.compose(kind.inverse(g), g), n_in), eye)


def test_dual_matrix(kind):
    n_out, n_in = sizes(kind)
    g = kind.random(n_out, n_in, batch=(2,), generator=gen(9))
    m = matrix(kind, g, n_in)
    d = dual_matrix(kind, g, n_in)
    torch.testing.assert_close(d, reference_dual(m))
    if kind.square:
        torch.testing.assert_close(d @ m.mT, torch.eye(n_in, dtype=F64).expand(2, n_in, n_in))
    else:
        # W2 pinv(M) M W1 = W2 W1: the dual undoes the widening
        torch.testing.assert_close(d.mT @ m, torch.eye(n_in, dtype=F64).expand(2, n_in, n_in))
    if kind.self_dual or kind.name == "stiefel":
        assert torch.equal(kind.dual(g), g)


def test_semi_permutation_dual_divides_by_copy_count():
    k = get_group_kind("semi_permutation")
    d = k.dual(torch.tensor([0, 1, 0, 0]))
    assert d.dtype == F64
    torch.testing.assert_close(d, torch.tensor([[1 / 3, 0], [0, 1], [1 / 3, 0], [1 / 3, 0]], dtype=F64))


def test_orthogonal_preserve_ones():
    k = get_group_kind("orthogonal")
    opts = {"preserve": "ones"}
    n = 5
    ones = torch.ones(n, dtype=F64)
    g = k.random(n, batch=(2000,), options=opts, generator=gen(10))
    torch.testing.assert_close(g @ ones, ones.expand(2000, n))
    assert k.contains(g, options=opts)
    assert not torch.allclose(g[0], torch.eye(n, dtype=F64))
    # Haar on O(n-1) has mean zero, so E[g] is the projector onto ones: 11^T / n
    torch.testing.assert_close(g.mean(0), torch.full((n, n), 1 / n, dtype=F64), atol=0.05, rtol=0)
    # both determinant signs occur (the whole stabiliser O(n-1), not just rotations)
    dets = torch.linalg.det(g[:200])
    assert (dets > 0).any() and (dets < 0).any()
    # a plain random orthogonal matrix almost never fixes ones
    assert not k.contains(k.random(n, generator=gen(11)), options=opts)
    assert k.contains(k.identity(n, options=opts), options=opts)


def test_apply_preserves_dtype(kind):
    n_out, n_in = sizes(kind)
    g = kind.random(n_out, n_in, batch=(2,), generator=gen(12))   # float64 / int64 element
    x = torch.randn(2, n_in, 3, generator=gen(13), dtype=torch.float32)
    for dual in (False, True):
        assert kind.apply(g[0], x, 1, dual=dual).dtype == torch.float32
        assert kind.apply(g, x, 1, dual=dual, batch_dim=0).dtype == torch.float32
    y = kind.apply(g[0], x, 1)
    torch.testing.assert_close(y, dense_apply(matrix(kind, g[0], n_in), x.double(), 1).float())


def test_permutation_project_is_trace_maximiser():
    k = get_group_kind("permutation")
    g = k.random(4, generator=gen(14))
    noisy = k.to_matrix(g) + 0.3 * torch.randn(4, 4, generator=gen(15), dtype=F64)
    assert torch.equal(k.project(noisy), g)
    for seed in range(5):
        m = torch.randn(4, 4, generator=gen(100 + seed), dtype=F64)
        best = max(itertools.permutations(range(4)), key=lambda p: sum(m[i, p[i]] for i in range(4)))
        assert k.project(m).tolist() == list(best)
    batch = torch.randn(3, 2, 4, 4, generator=gen(16), dtype=F64)
    assert torch.equal(k.project(batch)[2, 1], k.project(batch[2, 1]))


def test_orthogonal_and_stiefel_project_match_scipy_polar():
    for name, shape in [("orthogonal", (4, 4)), ("stiefel", (6, 4))]:
        k = get_group_kind(name)
        m = torch.randn(*shape, generator=gen(17), dtype=F64)
        u, _ = scipy.linalg.polar(m.numpy())
        torch.testing.assert_close(k.project(m), torch.from_numpy(u))
        g = k.random(*shape, generator=gen(18))
        noisy = g + 1e-6 * torch.randn(*shape, generator=gen(19), dtype=F64)
        projected = k.project(noisy)
        assert k.contains(projected)
        torch.testing.assert_close(projected, g, atol=1e-5, rtol=0)


def test_orthogonal_project_preserving_ones_is_nearest():
    k = get_group_kind("orthogonal")
    opts = {"preserve": "ones"}
    g = k.random(5, options=opts, generator=gen(20))
    noisy = g + 1e-6 * torch.randn(5, 5, generator=gen(21), dtype=F64)
    torch.testing.assert_close(k.project(noisy, options=opts), g, atol=1e-5, rtol=0)
    m = torch.randn(5, 5, generator=gen(22), dtype=F64)
    p = k.project(m, options=opts)
    assert k.contains(p, options=opts)
    others = k.random(5, batch=(500,), options=opts, generator=gen(23))
    assert torch.linalg.norm(p - m) <= torch.linalg.norm(others - m, dim=(-2, -1)).min()


def test_invertible_and_semi_permutation_project():
    inv = get_group_kind("invertible")
    g = inv.random(4, generator=gen(24))
    assert inv.project(g) is g
    with pytest.raises(ValueError, match="condition"):
        inv.project(torch.ones(3, 3, dtype=F64))
    semi = get_group_kind("semi_permutation")
    g = semi.random(6, 4, generator=gen(25))
    noisy = semi.to_matrix(g, n_in=4) + 0.2 * torch.rand(6, 4, generator=gen(26), dtype=F64)
    assert torch.equal(semi.project(noisy), g)
    # argmax may leave an input unused: project does not promise surjectivity
    lopsided = torch.zeros(3, 2, dtype=F64)
    lopsided[:, 0] = 1
    assert not semi.contains(semi.project(lopsided), n_in=2)


def test_validate_options():
    orth = get_group_kind("orthogonal")
    orth.validate_options({"preserve": "ones"})
    orth.validate_options(None)
    orth.validate_options({})
    with pytest.raises(ValueError, match=r"'preserv'.*did you mean 'preserve'.*allowed options: preserve"):
        orth.validate_options({"preserv": "ones"})
    with pytest.raises(ValueError, match=r"'preserve'.*one of \('ones',\).*'zeros'"):
        orth.validate_options({"preserve": "zeros"})
    with pytest.raises(ValueError, match=r"permutation.*no option 'preserve'.*allowed options: none"):
        get_group_kind("permutation").validate_options({"preserve": "ones"})
    with pytest.raises(ValueError, match="preserv"):
        orth.random(3, options={"preserv": "ones"})


def test_get_group_kind_typo():
    typo = r"unknown group kind 'orthogonl'; did you mean 'orthogonal'\? known: .*stiefel"
    with pytest.raises(KeyError, match=typo):
        get_group_kind("orthogonl")
    with pytest.raises(KeyError, match=r"'zzz'; known: invertible"):
        get_group_kind("zzz")


@pytest.mark.parametrize("module", ["base", "permutation", "semi_permutation", "orthogonal",
                                    "stiefel", "invertible", "registry", "__init__"])
def test_docstring_examples_run(module):
    name = "symdsl.groups" if module == "__init__" else f"symdsl.groups.{module}"
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_round_trip(kind):
    cuda = torch.device("cuda")
    n_out, n_in = sizes(kind)
    g = kind.random(n_out, n_in, batch=(2,), generator=gen(27), device=cuda)
    assert g.device.type == "cuda" and kind.contains(g, n_in=n_in)
    x = torch.randn(2, n_in, 3, device=cuda, dtype=torch.float32)
    for dual in (False, True):
        y = kind.apply(g, x, 1, dual=dual, batch_dim=0)
        assert y.device.type == "cuda" and y.dtype == torch.float32
        m = matrix(kind, g[1], n_in).cpu()
        ref = dense_apply(reference_dual(m) if dual else m, x[1].cpu().double(), 0).float()
        torch.testing.assert_close(y[1].cpu(), ref, atol=1e-5, rtol=1e-5)
    # a CPU element applies to a CUDA tensor (it is moved), and projection stays on device
    assert kind.apply(g[0].cpu(), x, 1).device.type == "cuda"
    assert kind.project(matrix(kind, g[0], n_in)).device.type == "cuda"
    assert kind.identity(n_out, n_in, device=cuda).device.type == "cuda"
