"""Hand-written RMSNorms are proved op by op (docs/checking.md, "How hand-written norms are proved").

The toy model writes its norm exactly as transformers does (cast to float32, ``pow(2).mean(-1)``,
``rsqrt``, gain multiply); the static check must prove a residual rotation through it, infer must
draft one, and every way of breaking the argument must be a located violation.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from symdsl.check.numeric import numeric_check
from symdsl.check.static import static_check
from symdsl.infer import check_draft, infer_spec
from symdsl.plugins import load
from symdsl.spec import load_spec_text

V, D, F = 11, 8, 16


class HandRMSNorm(nn.Module):
    """transformers' RMSNorm, written out (LlamaRMSNorm.forward)."""

    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.variance_epsilon = eps

    def forward(self, h):
        input_dtype = h.dtype
        h = h.to(torch.float32)
        variance = h.pow(2).mean(-1, keepdim=True)
        h = h * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * h.to(input_dtype)


class Block(nn.Module):
    def __init__(self, norm):
        super().__init__()
        self.norm = norm(D)
        self.up = nn.Linear(D, F)
        self.down = nn.Linear(F, D)

    def forward(self, x):
        return x + self.down(nn.functional.gelu(self.up(self.norm(x))))


class Toy(nn.Module):
    def __init__(self, norm=HandRMSNorm, layers: int = 2):
        super().__init__()
        self.embed = nn.Embedding(V, D)
        self.layers = nn.ModuleList([Block(norm) for _ in range(layers)])
        self.final_norm = norm(D)
        self.lm_head = nn.Linear(D, V, bias=False)
        with torch.no_grad():                      # gains that are not 1, so folding matters
            for module in self.modules():
                if module is not self and hasattr(module, "weight") and module.weight.ndim == 1:
                    module.weight.uniform_(0.5, 1.5)

    def forward(self, input_ids):
        x = self.embed(input_ids)
        for layer in self.layers:
            x = layer(x)
        return self.lm_head(self.final_norm(x))


def hand_toy() -> nn.Module:
    torch.manual_seed(0)
    return Toy(HandRMSNorm)


def llama_toy() -> nn.Module:
    from transformers.models.llama.modeling_llama import LlamaRMSNorm
    torch.manual_seed(0)
    return Toy(LlamaRMSNorm)


SPEC = """
symdsl: 1
name: hand-rmsnorm
example:
  factory: "test_rmsnorm_proof:{factory}"
  inputs: {{input_ids: {{randint: [0, 11], shape: [2, 5]}}}}
canonicalize:
  - fold_layernorm: {{norm: "layers.${{i}}.norm", readers: ["layers.${{i}}.up.weight"], site: resid}}
  - fold_layernorm: {{norm: final_norm, readers: [lm_head.weight], site: resid}}
dims: {{d: 8, f: 16, L: 2}}
repeat: {{i: L}}
sites:
  resid: {{group: {group}, size: d}}
  mlp.${{i}}: {{group: permutation, size: f}}
tensors:
  embed.weight: "_ resid"
  layers.${{i}}.up.weight: "mlp.${{i}} resid'"
  layers.${{i}}.up.bias: "mlp.${{i}}"
  layers.${{i}}.down.weight: "resid mlp.${{i}}'"
  layers.${{i}}.down.bias: "resid"
  lm_head.weight: "_ resid'"
invariant: ["layers.${{i}}.norm.weight", final_norm.weight]
"""


# -- one norm variant between two linear layers: every way of breaking the proof ---------------

def _mean_sq(x):
    return x.pow(2).mean(-1, keepdim=True)


VARIANTS = {
    "transformers": lambda m, x: m.norm.weight * (x * torch.rsqrt(_mean_sq(x) + 1e-6)),
    "x_times_x": lambda m, x: m.norm.weight * (x / torch.sqrt((x * x).sum(-1, keepdim=True) + 1e-6)),
    "square": lambda m, x: m.norm.weight * x * torch.square(x).mean(dim=-1, keepdim=True).add(1e-6).rsqrt(),
    "vector_norm": lambda m, x: m.norm.weight * x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(1e-6),
    "gemma": lambda m, x: (1.0 + m.norm.weight.float()) * (x * torch.rsqrt(_mean_sq(x) + 1e-6)),
    "other_axis": lambda m, x: x * torch.rsqrt(x.pow(2).mean(0, keepdim=True) + 1e-6),
    "pow3": lambda m, x: x * torch.rsqrt(x.pow(3).mean(-1, keepdim=True).abs() + 1e-6),
    "layernorm": lambda m, x: (x - x.mean(-1, keepdim=True)) * torch.rsqrt(_mean_sq(x) + 1e-6),
    "weighted_squares": lambda m, x: x * torch.rsqrt((m.norm.weight * x.pow(2)).mean(-1, keepdim=True) + 1e-6),
}


class Probe(nn.Module):
    def __init__(self, variant: str):
        super().__init__()
        self.inp, self.out = nn.Linear(4, 6), nn.Linear(6, 3)
        self.norm = nn.Module()
        self.norm.weight = nn.Parameter(torch.rand(6) + 0.5)
        self.variant = variant

    def forward(self, x):
        return self.out(VARIANTS[self.variant](self, self.inp(x)))


def probe(variant: str = "transformers") -> nn.Module:
    torch.manual_seed(0)
    return Probe(variant)


PROBE = """
symdsl: 1
name: probe
example:
  factory: "test_rmsnorm_proof:probe"
  config: {{variant: {variant}}}
  inputs: {{x: {{randn: true, shape: [5, 4]}}}}
canonicalize: [{fold}]
sites: {{r: {{group: {group}, size: 6}}}}
tensors: {{inp.weight: "r _", inp.bias: "r", out.weight: "_ r'", {gain_binding}}}
invariant: [out.bias{invariant}]
"""
FOLD = "fold_layernorm: {norm: norm, readers: [out.weight], site: r}"


def probe_spec(variant, group="orthogonal", fold=True, bound=False):
    return load_spec_text(PROBE.format(variant=variant, group=group, fold=FOLD if fold else "",
                                       gain_binding='norm.weight: "r"' if bound else "",
                                       invariant="" if bound else ", norm.weight"), trust_code=True)


def findings(spec, model=None):
    report = static_check(spec, model, registries=load())
    return [(f.node, f.op, f.message) for f in report.findings]


@pytest.mark.parametrize("variant", ["transformers", "x_times_x", "square", "vector_norm"])
def test_hand_written_norms_are_proved(variant):
    spec = probe_spec(variant)
    assert findings(spec) == []
    assert numeric_check(spec, registries=load(), tolerance=1e-5).ok


def test_gemma_gain_one_plus_weight():
    # (1 + w) * n: constant when w is (Gemma initialises w = 0); no fold step (it would fold w, not 1 + w)
    model = probe("gemma")
    spec = probe_spec("gemma", fold=False)
    assert len(findings(spec, model)) == 1              # random w: 1 + w is a per-feature gain
    with torch.no_grad():
        model.norm.weight.zero_()
    assert findings(spec, model) == []
    # (the numeric check perturbs the weights before canonicalizing, so it needs a canonicalize
    # step that makes 1 + w constant; fold_layernorm folds w itself, which is not that step)


NEGATIVE = {
    # squares summed over the token axis, not the rotated one: the squares reach the add
    "other_axis": ("add", "add acts on the squares of site r (orthogonal) before they are summed over their axis; "
                          "only a sum or mean of the squares over that axis (a norm) is invariant"),
    "pow3": ("pow", "site r (orthogonal) reaches pow, which commutes only with permutations"),
    "layernorm": ("mean", "mean over an axis carrying site r (orthogonal) is not invariant"),
    "weighted_squares": ("mul", "site r (orthogonal) is scaled by the per-feature gain norm.weight (mul), which is neither "
                                "bound to the site nor constant"),
}


@pytest.mark.parametrize("variant", sorted(NEGATIVE))
def test_broken_norms_are_located(variant):
    op, message = NEGATIVE[variant]
    spec = probe_spec(variant, fold=variant != "weighted_squares")
    found = findings(spec)
    assert len(found) == 1 and found[0][1] == op and found[0][2].startswith(message), found
    assert not numeric_check(spec, registries=load(), tolerance=1e-5).ok


def test_unfolded_gain_is_a_located_violation():
    (node, op, message), = findings(probe_spec("transformers", fold=False))
    assert op == "mul" and "per-feature gain norm.weight" in message and "fold_layernorm with 'site: r'" in message


def test_sum_of_squares_needs_an_isometry():
    (node, op, message), = findings(probe_spec("transformers", group="invertible"))
    assert op == "mean" and message.startswith("mean of the squares of site r (invertible) is not invariant: only "
                                               "isometric kinds")


def test_permutation_with_a_bound_gain():
    # a permutation commutes with every coordinatewise op: the gain moves with the site
    spec = probe_spec("transformers", group="permutation", fold=False, bound=True)
    assert findings(spec) == []
    assert numeric_check(spec, registries=load(), tolerance=1e-5).ok


# -- the toy LM: check, numeric, infer ------------------------------------------------------

FACTORIES = ["hand_toy", "llama_toy"]


@pytest.mark.parametrize("factory", FACTORIES)
def test_toy_rotation_is_proved(factory):
    spec = load_spec_text(SPEC.format(factory=factory, group="orthogonal"), trust_code=True)
    report = static_check(spec, registries=load())
    assert report.ok, [str(f) for f in report.findings]
    # the norm computes in float32 (h.to(torch.float32)): a float64 check sees ~1e-7, not 1e-9
    numeric = numeric_check(spec, registries=load())
    resid = next(s for s in numeric.sites if s.site == "resid")
    assert 1e-9 < resid.relative_error < 1e-6
    assert numeric_check(spec, registries=load(), tolerance=1e-5).ok


@pytest.mark.parametrize("factory", FACTORIES)
def test_infer_drafts_a_rotation(factory):
    model = hand_toy() if factory == "hand_toy" else llama_toy()
    draft = infer_spec(model, factory=f"test_rmsnorm_proof:{factory}",
                       inputs={"input_ids": {"randint": [0, V], "shape": [2, 5]}}, registries=load())
    assert "resid: {group: orthogonal, size: d}" in draft.text, draft.text
    assert "preserve" not in draft.text and "sum of its squares" in draft.text
    assert any("float32" in w for w in draft.warnings)
    result = check_draft(draft.text, registries=load(), tolerance=1e-5)
    assert result.ok, (result.error, result.static, result.numeric)
