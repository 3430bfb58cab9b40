"""`symdsl infer` on the decoder families: grouped-query attention with rotary embeddings (the draft
names the key/value heads and the query heads inside their groups, gives the query/key basis the
registered kind that commutes with RoPE, keeps one query/key and one value/output map per key/value
head), partial rotary and fused per-head projections (GPT-NeoX, GPT-J, Phi-3), stacked experts
(Mixtral); every draft passes its own static and numeric checks with the shipped spec's sites.
Without a kind that commutes with RoPE, q/k stay unbound and the draft says why."""
from __future__ import annotations

import pytest
import torch

import symdsl
from conftest import REGISTRIES
from symdsl.infer import check_draft
from symdsl.registry import Registries
from test_gemma import gemma
from test_gptj import gptj
from test_opt import opt
from test_qwen3 import qwen3
from test_llama import llama
from test_mixtral import mixtral
from test_neox import neox
from test_phi3 import phi3

GQA = {"num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 4}


@pytest.mark.parametrize("cls_name, overrides, spec_name", [
    ("LlamaForCausalLM", GQA, "hf-llama"),
    ("MistralForCausalLM", {}, "hf-llama"),
    ("Qwen2ForCausalLM", GQA, "hf-qwen2"),
])
def test_the_draft_has_the_shipped_spec_s_site_structure_and_passes_its_check(cls_name, overrides, spec_name):
    draft = symdsl.infer(llama(cls_name, **overrides), registries=REGISTRIES)
    shipped = {key: (s.group, s.per) for key, s in symdsl.find_spec(spec_name).document.sites.items()}
    assert _sites(draft) == shipped
    sites = {s.key: (s.group, s.per, s.size) for s in draft.sites}
    assert sites["resid"][0] == "orthogonal"
    assert sites["kv.${i}"] == ("permutation", None, "kvh")
    assert sites["qh.${i}"] == ("permutation", "kv.${i}", "g")
    assert sites["qk.${i}"] == ("rotary", "kv.${i}", "k")
    assert sites["ov.${i}"] == ("invertible", "kv.${i}", "k")
    patterns = {name.rsplit("self_attn.", 1)[-1]: text for name, text, _ in draft.tensors if "self_attn" in name}
    assert patterns["q_proj.weight"] == "(kv.${i} qh.${i} qk.${i}) resid'"
    assert patterns["k_proj.weight"] == "(kv.${i} qk.${i}') resid'"
    assert patterns["o_proj.weight"] == "resid (kv.${i} qh.${i} ov.${i}')"
    assert not draft.notes                          # nothing left unbound inside the model
    result = check_draft(draft.text, registries=REGISTRIES, tolerance=1e-5)
    assert result.ok, result


def test_without_a_kind_that_commutes_with_rope_the_query_key_basis_stays_unbound():
    bare = Registries.empty()
    for category, table in (("group kind", REGISTRIES.group_kinds), ("op rule", REGISTRIES.op_rules),
                            ("canonicalizer", REGISTRIES.canonicalizers), ("capture backend", REGISTRIES.capture_backends)):
        for name in table:
            if name != "rotary":
                bare = bare.add(category, name, table[name])
    draft = symdsl.infer(llama(**GQA), registries=bare)
    groups = {s.key: s.group for s in draft.sites}
    assert "rotary" not in groups.values() and not any(k.startswith("qk") for k in groups)
    assert any("rotary" in note and "q_proj" in note and "none is registered" in note for note in draft.notes)
    assert groups["ov.${i}"] == "invertible"        # the value/output basis does not meet RoPE


def _sites(spec_or_draft) -> dict:
    return {s.key: (s.group, s.per) for s in spec_or_draft.sites}


@pytest.mark.parametrize("family, build, spec_name", [
    ("GPT-NeoX, partial rotary, per-head fused qkv", lambda: neox(), "hf-gpt-neox"),
    ("GPT-J, interleaved partial rotary", lambda: gptj(), "hf-gptj"),
    ("Phi-3, fused qkv with unequal parts, partial rotary", lambda: phi3(), "hf-phi3"),
    ("Qwen3, q/k norms: no map inside a query/key head", lambda: qwen3(), "hf-qwen3"),
    ("Gemma2, sandwich norms: a permutation residual", lambda: gemma("hf-gemma2"), "hf-gemma2"),
    ("OPT, pre-LayerNorm with biases", lambda: opt(), "hf-opt"),
])
def test_drafts_of_partial_rotary_and_fused_projections_match_the_shipped_specs(family, build, spec_name):
    draft = symdsl.infer(build(), registries=REGISTRIES)
    shipped = {key: (s.group, s.per) for key, s in symdsl.find_spec(spec_name).document.sites.items()}
    drafted = _sites(draft)
    assert drafted == shipped, family
    assert all("rotary" in note for note in draft.notes)       # only Qwen3's normed q/k are left unbound
    result = check_draft(draft.text, registries=REGISTRIES, tolerance=1e-5)
    assert result.ok, result


def test_the_mixtral_draft_finds_experts_and_a_rotation_through_the_stacked_experts():
    draft = symdsl.infer(mixtral(), registries=REGISTRIES)
    sites = _sites(draft)
    assert sites["resid"] == ("orthogonal", None)                 # post-attention RMSNorm folds into the experts
    assert sites["experts.${i}"] == ("permutation", None) and sites["qh.${i}"] == ("permutation", "kv.${i}")
    assert any("batched_mm" in line for line in draft.text.splitlines()[:8])
    folds = [step["fold_layernorm"] for step, _ in draft.canonicalize if "fold_layernorm" in step]
    assert any(any("experts.gate_up_proj" in r for r in f["readers"]) and f.get("site") == "resid" for f in folds)
    # the units occur only in tensors stacked over the experts: one permutation per expert
    assert sites["mlp.${i}"] == ("permutation", "experts.${i}")
    shipped = {key: (s.group, s.per) for key, s in symdsl.find_spec("hf-mixtral").document.sites.items()}
    assert sites == shipped
    assert "each expert's slice moves on its own" in draft.text
    result = check_draft(draft.text, registries=REGISTRIES, tolerance=1e-5)
    assert result.ok, result


def test_the_gemma_draft_folds_the_one_plus_gains_into_a_rotation_of_the_residual():
    # Gemma's RMSNorm multiplies by (1 + weight): infer folds it with gain: one_plus, as the shipped
    # spec does, and the residual is a full rotation
    draft = symdsl.infer(gemma("hf-gemma"), registries=REGISTRIES)
    shipped = {key: (s.group, s.per) for key, s in symdsl.find_spec("hf-gemma").document.sites.items()}
    assert _sites(draft) == shipped and _sites(draft)["resid"] == ("orthogonal", None)
    folds = [step["fold_layernorm"] for step, _ in draft.canonicalize if "fold_layernorm" in step]
    assert len(folds) == 3 and all(f["gain"] == "one_plus" and f["site"] == "resid" for f in folds)
    assert "gain: one_plus" in draft.text
    assert check_draft(draft.text, registries=REGISTRIES, tolerance=1e-5).ok


class OffsetRMSNorm(torch.nn.Module):
    """Gemma's form, hand-written: rms(x) * (1 + weight)."""

    def __init__(self, width: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(width))

    def forward(self, x):
        return x / x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt() * (1 + self.weight)


class Offsets(torch.nn.Module):
    """read(norm(write(x) + b [+ 1])): an offset gain that folds, and optionally an offset bias that
    adds the constant 1 to the normalised space."""

    def __init__(self, offset_bias: bool = True):
        super().__init__()
        self.offset_bias = offset_bias
        self.b = torch.nn.Parameter(torch.randn(6))
        self.write, self.norm, self.read = torch.nn.Linear(4, 6), OffsetRMSNorm(6), torch.nn.Linear(6, 3)

    def forward(self, x):
        u = self.write(x) + ((1 + self.b) if self.offset_bias else self.b)
        return self.read(self.norm(u))


@pytest.mark.parametrize("offset_bias, preserve", [(False, None), (True, "ones")])
def test_an_offset_that_is_not_a_folded_gain_still_shifts_its_space(offset_bias, preserve):
    # the folded gain's offset is taken back (a full rotation acts on the normalised space); an offset
    # bias adds the constant 1 along the axis, so only rotations that fix the ones vector may act
    draft = symdsl.infer(Offsets(offset_bias), factory="test_infer_decoders:Offsets",
                         config={"offset_bias": offset_bias}, registries=REGISTRIES,
                         inputs={"x": {"randn": True, "shape": [2, 5, 4]}})
    site, = draft.sites
    assert (site.group, site.preserve) == ("orthogonal", preserve)
    folds = [step["fold_layernorm"] for step, _ in draft.canonicalize if "fold_layernorm" in step]
    assert [f.get("gain") for f in folds] == ["one_plus"]
    assert check_draft(draft.text, registries=REGISTRIES, tolerance=1e-9).ok
