"""The ``rotary`` group kind: per-head query/key maps that commute with rotary position embeddings.

Group axioms in float64, the commutation claim (G R(t) = R(t) G exactly for scaled rotations per
frequency pair, not for a generic invertible map), invariance of RoPE attention scores under
(G, G^-T) with transformers' own rotary helpers, the numeric check and weight-matching recovery on
a toy RoPE attention module, and learned matching's parametrisation.
"""
from __future__ import annotations

import doctest
import math

import pytest
import torch
from torch import nn
from transformers.models.gptj.modeling_gptj import apply_rotary_pos_emb as gptj_apply_rotary
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb as llama_apply_rotary

from conftest import relative_distance
from symdsl.act import act_state_dict, random_transform
from symdsl.check.numeric import numeric_check
from symdsl.groups import get_group_kind
from symdsl.groups import rotary as rotary_module
from symdsl.groups.rotary import LogPolarRotary, Rotary, from_complex, pair_indices
from symdsl.learn import act_dense
from symdsl.learn.parametrize import parametrize_sites
from symdsl.plugins import load
from symdsl.spec import load_spec_text, resolve

F64 = torch.float64
LAYOUTS = ["half", "interleaved"]
KIND = Rotary()


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rope_matrix(t: float, n: int, pairs: str, base: float = 10000.0) -> torch.Tensor:
    """R(t): the rotation RoPE applies at position t (one rotation by t * theta_i per pair)."""
    theta = base ** (-torch.arange(0, n, 2, dtype=F64) / n)                  # (n/2,) distinct frequencies
    angle = t * theta
    return from_complex(torch.stack([torch.cos(angle), torch.sin(angle)], -1), n, pairs)


# ----------------------------------------------------------------------------- group axioms


def test_rotary_is_a_registered_builtin_with_the_documented_capabilities():
    kind = get_group_kind("rotary")
    assert isinstance(kind, Rotary) and "rotary" in load().group_kinds
    assert (kind.square, kind.self_dual, kind.matrix_based, kind.discrete) == (True, False, True, False)
    assert not kind.elementwise_equivariant and not kind.isometric and not kind.fixes_ones({})
    assert not kind.permutes_positions and kind.least_squares_fit
    assert kind.options == {"pairs": ("half", "interleaved")}
    assert kind.permutation_restriction() is None and kind.lift_rule(per=True) is None
    with pytest.raises(ValueError, match="must be one of"):
        kind.validate_options({"pairs": "neox"})
    with pytest.raises(ValueError, match="even"):
        kind.random(5)


@pytest.mark.parametrize("pairs", LAYOUTS)
def test_group_axioms_in_float64(pairs):
    opts = {"pairs": pairs}
    n, batch = 8, (3,)
    a = KIND.random(n, batch=batch, options=opts, generator=gen(0))
    b = KIND.random(n, batch=batch, options=opts, generator=gen(1))
    eye = KIND.identity(n, batch=batch, options=opts)
    assert KIND.contains(a, opts) and KIND.contains(b, opts) and KIND.contains(eye, opts)
    torch.testing.assert_close(KIND.compose(a, eye), a, rtol=0, atol=1e-15)
    torch.testing.assert_close(KIND.compose(a, KIND.inverse(a)), eye, rtol=0, atol=1e-14)
    torch.testing.assert_close(KIND.inverse(a), torch.linalg.inv(a), rtol=0, atol=1e-14)
    torch.testing.assert_close(KIND.dual(a), torch.linalg.inv(a).mT, rtol=0, atol=1e-14)
    ab = KIND.compose(a, b)
    torch.testing.assert_close(ab, a @ b)
    assert KIND.contains(ab, opts) and KIND.contains(KIND.dual(a), opts) and KIND.contains(KIND.inverse(a), opts)
    torch.testing.assert_close(KIND.to_matrix(a), a)
    # the dual has the same angle and the inverse scale per pair
    za, zd = rotary_module.to_complex(a, pairs), rotary_module.to_complex(KIND.dual(a), pairs)
    torch.testing.assert_close(za.norm(dim=-1) * zd.norm(dim=-1), torch.ones(3, n // 2, dtype=F64))
    torch.testing.assert_close(torch.atan2(za[..., 1], za[..., 0]), torch.atan2(zd[..., 1], zd[..., 0]))
    # scales in [0.5, 2]
    scales = za.norm(dim=-1)
    assert bool((scales >= 0.5).all()) and bool((scales <= 2).all())
    # apply (primal and dual) is the matrix product
    x = torch.randn(5, n, dtype=F64, generator=gen(2))
    torch.testing.assert_close(KIND.apply(a[0], x, dim=1), x @ a[0].mT)
    torch.testing.assert_close(KIND.apply(a[0], x, dim=1, dual=True), x @ torch.linalg.inv(a[0]))


@pytest.mark.parametrize("pairs", LAYOUTS)
def test_contains_and_project_round_trip(pairs):
    opts, other = {"pairs": pairs}, {"pairs": "interleaved" if pairs == "half" else "half"}
    g = KIND.random(6, batch=(2,), options=opts, generator=gen(3))
    torch.testing.assert_close(KIND.project(g, options=opts), g, rtol=0, atol=0)
    assert not KIND.contains(g, other)                       # the other layout pairs other coordinates
    noise = torch.randn(2, 6, 6, dtype=F64, generator=gen(4))
    assert not KIND.contains(g + 1e-3 * noise, opts)
    assert not KIND.contains(torch.randn(6, 6, dtype=F64, generator=gen(5)), opts)
    p = KIND.project(g + 1e-3 * noise, options=opts)
    assert KIND.contains(p, opts)
    assert float((p - g).norm()) < 1e-3 * float(noise.norm())
    # projection is the nearest element: no random element of the group is closer
    m = torch.randn(6, 6, dtype=F64, generator=gen(6))
    p = KIND.project(m, options=opts)
    others = KIND.random(6, batch=(200,), options=opts, generator=gen(7))
    assert float((p - m).norm()) <= float((others - m).norm(dim=(-1, -2)).min())
    # a pair whose block has no scaled-rotation part is not an element, and has no nearest one
    zero_pair = g[0].clone()
    first, second = pair_indices(6, pairs)
    zero_pair[first[0], first[0]] = zero_pair[second[0], second[0]] = 0
    zero_pair[first[0], second[0]] = zero_pair[second[0], first[0]] = 0
    assert not KIND.contains(zero_pair, opts)
    with pytest.raises(ValueError, match="no usable rotary element"):
        KIND.project(zero_pair, options=opts)
    # wrong shapes and dtypes
    assert not KIND.contains(torch.eye(5, dtype=F64)) and not KIND.contains(torch.eye(4, dtype=torch.int64))
    assert not KIND.contains(torch.eye(4, dtype=F64), n_in=6)


@pytest.mark.parametrize("pairs", LAYOUTS)
def test_rotary_elements_commute_with_every_rope_rotation_and_invertible_maps_do_not(pairs):
    n = 8
    g = KIND.random(n, batch=(4,), options={"pairs": pairs}, generator=gen(8))
    ts = torch.rand(6, dtype=F64, generator=gen(9)) * 200 - 100
    rotations = torch.stack([rope_matrix(float(t), n, pairs) for t in ts])        # (6, n, n)
    for r in rotations:
        torch.testing.assert_close(g @ r, r @ g, rtol=0, atol=1e-12)
    generic = get_group_kind("invertible").random(n, generator=gen(10))
    assert min(float((generic @ r - r @ generic).abs().max()) for r in rotations[1:]) > 1e-2
    # nor does a rotary element of the other layout
    other = KIND.random(n, options={"pairs": "interleaved" if pairs == "half" else "half"}, generator=gen(11))
    assert max(float((other @ r - r @ other).abs().max()) for r in rotations) > 1e-2


def _rope(q, k, pairs, base=10000.0):
    """Apply RoPE to q, k (B, H, T, n) with transformers' helpers (Llama's rotate_half, GPT-J's every-two)."""
    n, length = q.shape[-1], q.shape[-2]
    inv_freq = base ** (-torch.arange(0, n, 2, dtype=F64) / n)
    freqs = torch.arange(length, dtype=F64)[:, None] * inv_freq                    # (T, n/2)
    if pairs == "half":
        emb = torch.cat([freqs, freqs], -1)[None]                                  # (1, T, n)
        return llama_apply_rotary(q, k, emb.cos(), emb.sin())
    sin, cos = freqs.sin()[None], freqs.cos()[None]                                # (1, T, n/2)
    turn = lambda x: gptj_apply_rotary(x.transpose(1, 2), sin, cos).transpose(1, 2)   # noqa: E731  GPT-J: (B, T, H, n)
    return turn(q), turn(k)


@pytest.mark.parametrize("pairs", LAYOUTS)
def test_scores_after_rope_are_invariant_under_g_and_its_dual(pairs):
    b, h, t, n = 2, 3, 7, 8
    q = torch.randn(b, h, t, n, dtype=F64, generator=gen(12))
    k = torch.randn(b, h, t, n, dtype=F64, generator=gen(13))
    g = KIND.random(n, batch=(h,), options={"pairs": pairs}, generator=gen(14))      # one map per head
    scores = lambda q, k: torch.einsum("bhtn,bhsn->bhts", *_rope(q, k, pairs))       # noqa: E731
    moved_q = torch.einsum("hmn,bhtn->bhtm", g, q)
    moved_k = torch.einsum("hmn,bhtn->bhtm", KIND.dual(g), k)
    torch.testing.assert_close(scores(moved_q, moved_k), scores(q, k), rtol=1e-12, atol=1e-12)
    generic = get_group_kind("invertible").random(n, batch=(h,), generator=gen(15))
    moved_q = torch.einsum("hmn,bhtn->bhtm", generic, q)
    moved_k = torch.einsum("hmn,bhtn->bhtm", torch.linalg.inv(generic).mT, k)
    assert float((scores(moved_q, moved_k) - scores(q, k)).abs().max()) > 1e-2


# ----------------------------------------------------------------------------- a toy RoPE attention module


class RopeAttention(nn.Module):
    """Causal multi-head self-attention with RoPE (transformers' helpers): d = 8, 2 heads of 4."""

    def __init__(self, d: int = 8, heads: int = 2, pairs: str = "half"):
        super().__init__()
        self.heads, self.pairs = heads, pairs
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.o = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        split = lambda y: y.view(b, t, self.heads, d // self.heads).transpose(1, 2)   # noqa: E731  (B, H, T, k)
        q, k = _rope(split(self.q(x)), split(self.k(x)), self.pairs)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        weights = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        return self.o((weights @ split(self.v(x))).transpose(1, 2).reshape(b, t, d))


def rope_attention_half() -> nn.Module:
    return RopeAttention(pairs="half")


def rope_attention_interleaved() -> nn.Module:
    return RopeAttention(pairs="interleaved")


def toy_spec(pairs: str, qk: str = "rotary", option: str | None = None):
    """The spec of :class:`RopeAttention` with layout ``pairs``; ``option``: the qk site's layout if not ``pairs``."""
    options = f", pairs: {option or pairs}" if qk == "rotary" else ""
    return load_spec_text(f"""\
symdsl: 1
name: toy-rope-{pairs}
example: {{factory: "test_rotary:rope_attention_{pairs}", inputs: {{x: {{randn: true, shape: [2, 6, 8]}}}}}}
dims: {{d: 8, h: 2, k: d // h}}
sites:
  heads: {{group: permutation, size: h}}
  qk:    {{group: {qk}, size: k, per: heads{options}}}
  ov:    {{group: invertible, size: k, per: heads}}
tensors:
  q.weight: "(heads qk) _"
  q.bias: "(heads qk)"
  k.weight: "(heads qk') _"
  k.bias: "(heads qk')"
  v.weight: "(heads ov) _"
  v.bias: "(heads ov)"
  o.weight: "_ (heads ov')"
invariant: [o.bias]
""", f"toy-rope-{pairs}.yaml")


REGISTRIES = load()


@pytest.mark.parametrize("pairs", LAYOUTS)
def test_the_numeric_check_passes_with_rotary_and_fails_with_invertible(pairs):
    model = RopeAttention(pairs=pairs).double()
    report = numeric_check(toy_spec(pairs), model, registries=REGISTRIES)
    assert report.ok, report
    # a per-head invertible q/k map does not commute with RoPE: the check catches the claim
    wrong = numeric_check(toy_spec(pairs, qk="invertible"), model, registries=REGISTRIES)
    assert not wrong.ok and "qk" in {s.site for s in wrong.failed}
    # the other layout's maps do not commute with this model's RoPE either
    other = "interleaved" if pairs == "half" else "half"
    assert not numeric_check(toy_spec(pairs, option=other), model, registries=REGISTRIES).ok


def _pair(pairs: str, seed: int):
    spec = toy_spec(pairs)
    model = RopeAttention(pairs=pairs).double()
    torch.manual_seed(seed)
    for p in model.parameters():
        nn.init.normal_(p, std=0.5)
    resolved = resolve(spec, model, registries=REGISTRIES)
    return model, resolved, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("pairs", LAYOUTS)
def test_weight_matching_recovers_a_hidden_rotary_element(pairs):
    model, resolved, a = _pair(pairs, seed=0)
    hidden = random_transform(resolved, seed=21)
    assert KIND.contains(hidden["qk"], {"pairs": pairs})
    b = act_state_dict(resolved, a, hidden)
    assert relative_distance(resolved, b, a) > 0.3
    result = REGISTRIES.matchers["weight"].match(resolved, a, b)
    assert KIND.contains(result.elements["qk"], {"pairs": pairs})
    aligned = act_state_dict(resolved, b, result.elements)
    assert relative_distance(resolved, aligned, a) < 1e-6
    assert result.info["relative_distance"] < 1e-6
    x = torch.randn(2, 6, 8, dtype=F64, generator=gen(30))
    with torch.no_grad():
        expected = model(x)
        model.load_state_dict(b)
        torch.testing.assert_close(model(x), expected, rtol=1e-10, atol=1e-10)   # B computes what A does


def test_activation_matching_fits_rotary_sites_within_the_group():
    model, resolved, a = _pair("interleaved", seed=0)
    b = act_state_dict(resolved, a, random_transform(resolved, seed=21))
    generator = gen(31)
    batches = ({"x": torch.randn(4, 6, 8, dtype=F64, generator=generator)} for _ in range(5))
    result = REGISTRIES.matchers["activation"].match(resolved, a, b, model=model, batches=batches)
    assert KIND.contains(result.elements["qk"], {"pairs": "interleaved"})
    assert "within the group" in result.info["methods"]["qk"]
    assert relative_distance(resolved, act_state_dict(resolved, b, result.elements), a) < 1e-6


def test_weight_matching_on_unrelated_models_ends_in_the_group_and_lowers_the_distance():
    _, resolved, a = _pair("half", seed=1)
    _, _, b = _pair("half", seed=2)
    result = REGISTRIES.matchers["weight"].match(resolved, a, b)
    assert KIND.contains(result.elements["qk"], {"pairs": "half"})
    assert result.objective[-1] < result.objective[0]
    assert all(x >= y - 1e-9 * abs(x) for x, y in zip(result.objective, result.objective[1:]))


@pytest.mark.parametrize("sides", ["both", "primal", "dual"])
def test_least_squares_solve_beats_a_dense_search_per_pair(sides):
    """Noisy two-sided problem on one pair: the solver's best candidate is the global optimum."""
    n, m = 2, 9
    g = KIND.random(n, generator=gen(40))
    bp, bd = (torch.randn(1, n, m, dtype=F64, generator=gen(s)) for s in (41, 42))
    ap = g @ bp + 0.3 * torch.randn(1, n, m, dtype=F64, generator=gen(43))
    ad = KIND.dual(g) @ bd + 0.3 * torch.randn(1, n, m, dtype=F64, generator=gen(44))

    class Gram:   # the sums weight matching passes (symdsl.match.solvers.Gram)
        def __init__(self, a, b):
            self.ab, self.bb, self.aa = a @ b.mT, b @ b.mT, a @ a.mT

    primal = Gram(ap, bp) if sides != "dual" else None
    dual = Gram(ad, bd) if sides != "primal" else None

    def loss(h):
        total = 0.0
        if primal is not None:
            total += float(((ap - h @ bp) ** 2).sum())
        if dual is not None:
            total += float(((ad - KIND.dual(h) @ bd) ** 2).sum())
        return total

    candidates = KIND.least_squares_solve(primal, dual, KIND.identity(n, batch=(1,)))
    best = min(loss(c) for c in candidates)
    radius = torch.exp(torch.linspace(-3, 3, 601, dtype=F64))
    angle = torch.linspace(-math.pi, math.pi, 721, dtype=F64)
    z = torch.stack(torch.meshgrid(radius, angle, indexing="ij"), -1).reshape(-1, 2)
    grid = from_complex(torch.stack([z[:, 0] * torch.cos(z[:, 1]), z[:, 0] * torch.sin(z[:, 1])], -1)[:, None], n)
    values = torch.zeros(len(grid), dtype=F64)
    if primal is not None:
        values += ((ap - grid @ bp) ** 2).sum((-1, -2))
    if dual is not None:
        values += ((ad - KIND.dual(grid) @ bd) ** 2).sum((-1, -2))
    assert best <= float(values.min()) + 1e-12
    assert loss(candidates[0]) <= best + 1e-9 * best     # the polished candidate is the best one


# ----------------------------------------------------------------------------- learned matching


@pytest.mark.parametrize("pairs", LAYOUTS)
def test_parametrisation_gradients_match_finite_differences(pairs):
    g0 = KIND.random(6, batch=(2,), options={"pairs": pairs}, generator=gen(50))
    p = KIND.parametrize(g0, options={"pairs": pairs})
    assert isinstance(p, LogPolarRotary)
    primal, dual = p.dense()
    torch.testing.assert_close(primal, g0)
    torch.testing.assert_close(dual, KIND.dual(g0))
    weights = torch.randn(2, 6, 6, dtype=F64, generator=gen(51))

    def objective(log_scale, angle):
        primal, dual = torch.func.functional_call(p, {"log_scale": log_scale, "angle": angle}, ())
        return (weights * primal).sum() + (weights * dual).sum() ** 2

    x = (p.log_scale.detach().clone().requires_grad_(True), p.angle.detach().clone().requires_grad_(True))
    assert torch.autograd.gradcheck(objective, x, eps=1e-6, atol=1e-6)
    # whatever the parameters, the element is in the group and the dual is its g^-T
    with torch.no_grad():
        for seed in range(5):
            p.log_scale.copy_(torch.randn(2, 3, dtype=F64, generator=gen(60 + seed)))
            p.angle.copy_(10 * torch.randn(2, 3, dtype=F64, generator=gen(70 + seed)))
            assert KIND.contains(p.element(), {"pairs": pairs})
            torch.testing.assert_close(p.dense()[1], KIND.dual(p.element()))


def test_learned_matching_parametrises_rotary_sites_and_the_dense_action_equals_the_engine():
    _, resolved, a = _pair("interleaved", seed=3)
    hidden = random_transform(resolved, seed=4)
    params = parametrize_sites(resolved, hidden, dtype=F64)
    assert isinstance(params["qk"], LogPolarRotary) and params["qk"].log_scale.shape == (2, 2)
    torch.testing.assert_close(params["qk"].element(), hidden["qk"])
    moved = act_dense(resolved, a, {name: p.dense() for name, p in params.items()})
    expected = act_state_dict(resolved, a, hidden)
    for key in resolved.tensors:
        torch.testing.assert_close(moved[key], expected[key], rtol=1e-12, atol=1e-12)


def test_doctests_of_the_rotary_module():
    assert doctest.testmod(rotary_module, raise_on_error=False).failed == 0
