"""Rules for mixture-of-experts routing (symdsl/graph/ops/moe.py): topk, index (a gather of rows at
topk's indices), repeat_interleave; and the numeric check's dtype fallback (symdsl/check/precision.py).

Toy modules, written out by hand, so that each rule is seen alone: a router ranks E experts per
token, the chosen experts' stacked weights are gathered and applied. The spec permutes the experts
with the router's rows and each expert's hidden units per expert."""
from __future__ import annotations

import doctest

import pytest
import torch

import symdsl
from conftest import REGISTRIES
from symdsl.check.numeric import numeric_check
from symdsl.check.static import static_check
from symdsl.graph.ops import builtin_op_rules, moe
from symdsl.models import kernels

D, E, F, K = 6, 4, 5, 2


class ToyMoE(torch.nn.Module):
    """x (B, T, D) -> sum over the top-K experts of p_e * (relu(x U_e^T) W_e^T); ``use`` picks a variant."""

    def __init__(self, use: str = "gather"):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.router = torch.nn.Parameter(torch.randn(E, D, generator=g))
        self.up = torch.nn.Parameter(torch.randn(E, F, D, generator=g))          # (E, F, D)
        self.down = torch.nn.Parameter(torch.randn(E, D, F, generator=g))        # (E, D, F)
        self.use = use

    def forward(self, x):
        b, t, d = x.shape
        x = x.reshape(-1, d)                                                     # (T', D)
        probs = torch.softmax(x @ self.router.T, dim=-1)                         # (T', E)
        weights, ids = torch.topk(probs, K, dim=-1)                              # (T', K) each
        if self.use == "one_hot":          # the indices reach an op that symdsl does not follow
            weights = weights * torch.nn.functional.one_hot(ids, E).sum(-1)
        flat = ids.reshape(-1)                                                   # (S,), S = T' K
        if self.use == "arange":           # rows gathered at positions that are not the router's
            flat = torch.arange(flat.shape[0]) % E
        rows = x.repeat_interleave(K, dim=0)                                     # (S, D)
        h = torch.relu(torch.bmm(self.up[flat], rows.unsqueeze(-1)).squeeze(-1))   # (S, F)
        y = torch.bmm(self.down[flat], h.unsqueeze(-1)).squeeze(-1)              # (S, D)
        y = y * weights.reshape(-1, 1)
        return y.view(b * t, K, d).sum(1).view(b, t, d)


def toy(use: str = "gather"):
    return ToyMoE(use)


def toy_spec(use: str = "gather", router: str = "experts _", experts: str = "permutation"):
    return symdsl.load_spec_text(f"""
symdsl: 1
name: toy-moe
example: {{factory: "test_moe_rules:toy", config: {{use: {use}}}, inputs: {{x: {{randn: true, shape: [2, 3, {D}]}}}}}}
sites:
  experts: {{group: {experts}, size: {E}}}
  units: {{group: permutation, size: {F}, per: experts}}
tensors:
  router: "{router}"
  up: "experts units _"
  down: "experts _ units'"
""", trust_code=True)


def test_the_routing_of_a_hand_written_moe_passes_both_checks():
    spec = toy_spec()
    report = static_check(spec, registries=REGISTRIES)
    assert report.ok, [str(f) for f in report.findings]
    numeric = numeric_check(spec, registries=REGISTRIES)
    assert numeric.ok and numeric.precision == "float64" and max(s.relative_error for s in numeric.sites) < 1e-12


def test_indices_that_reach_an_op_symdsl_does_not_follow_fix_the_ranked_axis_at_topk():
    report = static_check(toy_spec("one_hot"), registries=REGISTRIES)
    assert [(f.op, f.site) for f in report.findings] == [("topk", "experts")]
    message = report.findings[0].message
    assert "topk's indices reach node one_hot (one_hot), which symdsl does not follow" in message


def test_a_gather_at_computed_positions_fixes_the_gathered_axis():
    report = static_check(toy_spec("arange"), registries=REGISTRIES)
    assert report.findings and {f.op for f in report.findings} == {"index"}
    assert all("index gathers entries of this axis at computed positions" in f.message for f in report.findings)


def test_a_router_that_does_not_move_with_the_experts_fails_at_the_gather():
    report = static_check(toy_spec(router="_ _"), registries=REGISTRIES)
    assert {f.op for f in report.findings} == {"index"}
    assert all("_4 does not match experts" in f.message for f in report.findings)
    assert not numeric_check(toy_spec(router="_ _"), registries=REGISTRIES).ok


def test_a_rotation_of_the_router_outputs_is_refused_before_topk():
    report = static_check(symdsl.load_spec_text(_orthogonal_router_spec(), trust_code=True), registries=REGISTRIES)
    assert not report.ok and report.findings[0].op == "softmax"


def _orthogonal_router_spec() -> str:
    return f"""
symdsl: 1
name: toy-moe-rotated
example: {{factory: "test_moe_rules:toy", inputs: {{x: {{randn: true, shape: [2, 3, {D}]}}}}}}
sites:
  logits: {{group: orthogonal, size: {E}}}
tensors:
  router: "logits _"
invariant: [up, down]
"""


def test_repeat_interleave_of_a_site_carrying_axis_is_refused():
    class Repeat(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(3, 4))

        def forward(self, x):                      # (B, 4) -> (B, 3) -> rows of the site repeated
            return (x @ self.w.T).repeat_interleave(2, dim=-1)

    spec = symdsl.load_spec_text("symdsl: 1\nname: rep\nsites: {h: {group: permutation, size: 3}}\n"
                                 "tensors: {w: \"h _\"}\nexample: {factory: \"x:y\", inputs: {x: {randn: true, shape: [2, 4]}}}\n", trust_code=True)
    report = static_check(spec, Repeat(), registries=REGISTRIES)
    assert [(f.op, f.site) for f in report.findings] == [("repeat_interleave", "h")]
    assert "repeat_interleave copies the entries of this axis" in report.findings[0].message


def test_the_rules_are_in_the_builtin_table_and_inference_walks_them():
    rules = builtin_op_rules()
    assert {"topk", "index", "repeat_interleave"} <= set(rules)
    assert rules["topk"] is moe.topk_rule
    draft = symdsl.infer(ToyMoE(), factory="test_moe_rules:toy", inputs={"x": {"randn": True, "shape": [2, 3, D]}})
    # inference reads the same rules: the gather unites the router's rows with the experts' axis
    lines = {line.split(":")[0].strip(): line for line in draft.text.splitlines()}
    router_site = lines["router"].split('"')[1].split()[0]
    assert router_site != "_" and lines["up"].split('"')[1].split()[0] == router_site


class NoDouble(torch.nn.Module):
    """A kernel without a float64 path (like a grouped matmul): it refuses float64 inputs."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)

    def forward(self, x):
        if x.dtype == torch.float64:
            raise RuntimeError("Expected mat_a to be Float32, but got Double")
        return self.b(torch.relu(self.a(x)))


def no_double():
    return NoDouble()


NO_DOUBLE = """
symdsl: 1
name: no-double
example: {{factory: "test_moe_rules:no_double", inputs: {{x: {{randn: true, shape: [5, {width}]}}}}}}
sites: {{h: {{group: permutation, size: 4}}}}
tensors: {{a.weight: "h _", a.bias: h, b.weight: "_ h'"}}
invariant: [b.bias]
"""


def test_a_model_that_cannot_run_in_float64_is_checked_in_float32_and_says_so():
    text = NO_DOUBLE.format(width=3)
    report = numeric_check(symdsl.load_spec_text(text, trust_code=True), registries=REGISTRIES)
    assert report.ok and report.precision == "float32" and report.requested_tolerance == 1e-9
    assert report.tolerance == pytest.approx(100 * torch.finfo(torch.float32).eps)
    assert any("does not run in float64 (RuntimeError: Expected mat_a to be Float32" in n and "checked in float32" in n
               for n in report.notes)
    wrong = symdsl.load_spec_text(text.replace('b.weight: "_ h\'"', 'b.weight: "_ _"'), trust_code=True)   # the reader not moved
    assert not numeric_check(wrong, registries=REGISTRIES).ok


def test_a_model_that_runs_in_no_dtype_gets_a_clear_error():
    spec = symdsl.load_spec_text(NO_DOUBLE.format(width=7), trust_code=True)        # inputs of the wrong width: nothing runs
    with pytest.raises(symdsl.SymdslError, match="failed in every dtype the check can use .*float64: RuntimeError"):
        numeric_check(spec, registries=REGISTRIES)


@pytest.mark.parametrize("module", [moe, kernels])
def test_doctests(module):
    assert doctest.testmod(module, raise_on_error=False).failed == 0


class PooledToken(torch.nn.Module):
    """CLIP's pooled output: each sequence's hidden state at a computed position (its largest input
    coordinate), hidden[arange(B), pos] with two index tensors."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(5, 4))
        self.v = torch.nn.Parameter(torch.randn(3, 5))

    def forward(self, x):                          # x (B, T, 4)
        hidden = torch.tanh(x @ self.w.T)          # (B, T, 5)
        pos = x[..., 0].argmax(-1)                 # (B,)
        pooled = hidden[torch.arange(x.shape[0]), pos]     # (B, 5)
        return pooled @ self.v.T                   # (B, 3)


def _pooled_spec(w: str, v: str) -> str:
    return (f"symdsl: 1\nname: pooled\nsites: {{u: {{group: permutation, size: 5}}}}\n"
            f"tensors: {{w: \"{w}\", v: \"{v}\"}}\n"
            "example: {factory: \"x:y\", inputs: {x: {randn: true, shape: [2, 6, 4]}}}\n")


def test_a_gather_with_several_index_tensors_passes_the_untouched_axes_through():
    model = PooledToken().double()
    spec = symdsl.load_spec_text(_pooled_spec("u _", "_ u'"), trust_code=True)
    report = static_check(spec, model, registries=REGISTRIES)
    assert report.ok, [str(f) for f in report.findings]
    numeric = numeric_check(spec, model, registries=REGISTRIES)
    assert numeric.ok and max(s.relative_error for s in numeric.sites) < 1e-12


def test_a_site_on_an_axis_gathered_by_several_index_tensors_is_refused():
    class TokenSite(PooledToken):
        def forward(self, x):                      # the gathered axis (B, T) carries the site
            hidden = torch.tanh(self.w @ x.transpose(-1, -2))      # (B, 5, T): gather along 5
            return hidden[torch.arange(x.shape[0]), x[:, :, 0].argmax(-1) % 5] @ torch.ones(6, dtype=x.dtype)

    spec = symdsl.load_spec_text(_pooled_spec("u _", "_ _"), trust_code=True)
    report = static_check(spec, TokenSite().double(), registries=REGISTRIES)
    assert [f.op for f in report.findings] == ["index"]
    assert "index gathers entries of this axis at computed positions" in report.findings[0].message


class MaskedMix(torch.nn.Module):
    """where(mask, x W^T, fill) + zeros(...): a mask fill (T5's attention masks) and a constant tensor."""

    def __init__(self, fill: float = -1.5):
        super().__init__()
        self.fill = fill
        self.w = torch.nn.Parameter(torch.randn(5, 4))
        self.v = torch.nn.Parameter(torch.randn(3, 5))

    def forward(self, x):                                  # x (B, T, 4)
        h = x @ self.w.T                                   # (B, T, 5)
        keep = (x[..., :1] > 0)                            # (B, T, 1): one choice per token
        h = torch.where(keep, h, self.fill) + torch.zeros(1, 1, 5, dtype=x.dtype)
        return torch.tanh(h) @ self.v.T


@pytest.mark.parametrize("fill, group, ok", [
    (-1.5, "permutation", True),         # a number fills whole vectors: c·1 stays c·1 under a permutation
    (-1.5, "orthogonal", False),         # ... but not under a general rotation: refused at where
    (0.0, "orthogonal", False),          # zero fill is linear, but tanh after it needs coordinate moves
])
def test_where_fills_are_shifts_and_constant_tensors_are_copies(fill, group, ok):
    spec = symdsl.load_spec_text(
        f"symdsl: 1\nname: masked\nsites: {{u: {{group: {group}, size: 5}}}}\ntensors: {{w: \"u _\", v: \"_ u'\"}}\n"
        "example: {factory: \"x:y\", inputs: {x: {randn: true, shape: [2, 6, 4]}}}\n", trust_code=True)
    report = static_check(spec, MaskedMix(fill).double(), registries=REGISTRIES)
    assert report.ok is ok, [str(f) for f in report.findings]
    if not ok and fill != 0:
        assert report.findings[0].op == "where"
