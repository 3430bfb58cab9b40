"""LLaMA-family decoders (hf-llama, hf-qwen2): RMSNorm folded under a full rotation, grouped-query
heads, per-head query/key maps that commute with RoPE (group 'rotary'), SwiGLU units, Qwen2's q/k/v
biases; numeric invariance in float64 (to the float32 the model computes in) and recovery."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import symdsl
from conftest import REGISTRIES, relative_distance
from symdsl.act import act_state_dict, random_transform
from symdsl.canon import canonicalize
from symdsl.check.numeric import numeric_check
from symdsl.check.static import static_check
from symdsl.models.build import perturb_parameters, quiet_transformers
from symdsl.spec import resolve

CONFIG = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=64, max_position_embeddings=32, bos_token_id=0, eos_token_id=0,
              pad_token_id=0)


def llama(cls_name: str = "LlamaForCausalLM", seed: int = 0, **overrides):
    import transformers

    cls = getattr(transformers, cls_name)
    torch.manual_seed(seed)
    with quiet_transformers():
        model = cls(cls.config_class(**{**CONFIG, **overrides}))
    model = perturb_parameters(model, seed=seed).eval()
    if model.config.tie_word_embeddings:
        model.tie_weights()
    return model


FAMILIES = [
    ("LlamaForCausalLM", {}, "hf-llama"),
    ("LlamaForCausalLM", {"num_key_value_heads": 4}, "hf-llama"),          # plain multi-head attention
    ("LlamaForCausalLM", {"tie_word_embeddings": True}, "hf-llama"),       # SmolLM2 / Llama 3.2 style
    ("MistralForCausalLM", {}, "hf-llama"),
    ("Qwen2ForCausalLM", {}, "hf-qwen2"),                                  # q/k/v biases
    ("Qwen2ForCausalLM", {"tie_word_embeddings": True}, "hf-qwen2"),       # Qwen2-0.5B style
]


@pytest.mark.parametrize("cls_name, overrides, spec_name", FAMILIES)
def test_the_spec_matches_and_its_symmetries_hold_to_the_model_s_own_precision(cls_name, overrides, spec_name):
    model = llama(cls_name, **overrides)
    spec = symdsl.find_spec(spec_name)
    assert symdsl.api.pipeline.spec_for(None, model, REGISTRIES).name == spec_name
    report = numeric_check(spec, model, registries=REGISTRIES)
    # transformers' RMSNorm computes in float32 even in a float64 run: the check says so and asks
    # for what float32 can show (100 rounding units), not 1e-9
    assert report.precision == "float32" and report.requested_tolerance == 1e-9
    assert report.tolerance == pytest.approx(100 * torch.finfo(torch.float32).eps)
    assert report.ok, report.failed
    assert max(s.relative_error for s in report.sites) < 1e-6


@pytest.mark.parametrize("cls_name, overrides", [
    ("LlamaForCausalLM", {"tie_word_embeddings": True}),                   # grouped-query, tied
    ("LlamaForCausalLM", {"num_key_value_heads": 4}),
    ("MistralForCausalLM", {}),
])
def test_the_static_check_follows_rope_with_rotary_query_key_maps(cls_name, overrides):
    spec = symdsl.find_spec("hf-llama")
    assert {"qk.0", "qk.1"} <= set(resolve(spec, llama(cls_name, **overrides), registries=REGISTRIES).sites)
    report = static_check(spec, llama(cls_name, **overrides), registries=REGISTRIES)
    assert report.ok, [str(f) for f in report.findings]


def _with_qk(group: str):
    text = Path(symdsl.find_spec("hf-llama").file).read_text()
    edited = text.replace('qk.${i}:    {group: rotary,', f'qk.${{i}}:    {{group: {group},')
    assert edited != text
    return symdsl.load_spec_text(edited)


def test_an_invertible_query_key_map_fails_statically_at_the_rotary_embedding():
    report = static_check(_with_qk("invertible"), llama(tie_word_embeddings=True), registries=REGISTRIES)
    assert not report.ok
    assert {f.op for f in report.findings} == {"mul", "cat"}
    assert {f.site for f in report.findings} == {"qk.0"}          # layer 1 lies downstream of the break
    for f in report.findings:
        assert "the rotary position embedding turns each coordinate pair (i with i + n/2)" in f.message
        assert "an invertible map does not commute with it" in f.message
        assert "declare the site 'group: rotary'" in f.message
        assert f.op != "mul" or f.message.startswith("mul by a rotary cos/sin table")
        assert f.op != "cat" or f.message.startswith("rotate_half (the rotary position embedding)")


def test_the_interleaved_pair_layout_is_not_llama_s_and_both_checks_say_so():
    spec = symdsl.load_spec_text(Path(symdsl.find_spec("hf-llama").file).read_text().replace(
        'qk.${i}:    {group: rotary,', 'qk.${i}:    {group: rotary, pairs: interleaved,'))
    report = static_check(spec, llama(), registries=REGISTRIES)
    assert not report.ok and all("set 'pairs: half'" in f.message for f in report.findings)
    numeric = numeric_check(spec, llama(), registries=REGISTRIES)
    assert not numeric.ok and {"qk.0", "qk.1"} <= set(numeric.failed_sites)


def test_a_wrong_binding_fails_even_at_float32_tolerance():
    wrong = Path(symdsl.find_spec("hf-llama").file).read_text().replace(
        '"resid (kv.${i} qh.${i} ov.${i}\')"', '"resid (kv.${i} qh.${i} ov.${i})"')        # o_proj primal: not a symmetry
    report = numeric_check(symdsl.load_spec_text(wrong), llama(), registries=REGISTRIES)
    assert not report.ok and {"ov.0", "ov.1"} <= set(report.failed_sites)


@pytest.mark.parametrize("cls_name, spec_name, overrides", [
    ("LlamaForCausalLM", "hf-llama", {}),
    ("Qwen2ForCausalLM", "hf-qwen2", {}),
    # 4 query heads per key/value head: 4! orders inside each group, one per key/value head
    ("LlamaForCausalLM", "hf-llama", {"num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 4}),
])
def test_weight_matching_recovers_a_hidden_element(cls_name, spec_name, overrides):
    spec = symdsl.find_spec(spec_name)
    model = llama(cls_name, **overrides).double()
    resolved = resolve(spec, model, registries=REGISTRIES)
    assert {"qk.0", "qk.1", "qh.0", "qh.1"} <= set(resolved.sites)
    canonicalize(model, resolved)
    a = {k: v.clone() for k, v in model.state_dict().items()}
    hidden = random_transform(resolved, seed=3)
    identity = torch.arange(resolved.sites["qh.0"].size)
    assert any(not torch.equal(row, identity) for row in hidden["qh.0"])    # query heads really reordered
    b = act_state_dict(resolved, a, hidden)
    assert relative_distance(resolved, b, a) > 0.5
    result = REGISTRIES.matchers["weight"].match(resolved, a, b)
    assert relative_distance(resolved, act_state_dict(resolved, b, result.elements), a) < 1e-6


def test_query_heads_move_inside_their_group_in_the_numeric_and_static_checks():
    # moving query heads inside a group keeps the function (keys/values are shared copies) ...
    model = llama(num_attention_heads=8, num_key_value_heads=2, head_dim=4)
    report = numeric_check(symdsl.find_spec("hf-llama"), model, registries=REGISTRIES)
    assert report.ok and {"qh.0", "qh.1"} <= {s.site for s in report.sites}
    # ... only when the output projection's blocks move with them
    text = Path(symdsl.find_spec("hf-llama").file).read_text()
    wrong = text.replace('"resid (kv.${i} qh.${i} ov.${i}\')"', '"resid (kv.${i} g ov.${i}\')"')
    assert wrong != text
    static = static_check(symdsl.load_spec_text(wrong), model, registries=REGISTRIES)
    assert not static.ok and any("o_proj" in str(f) and "qh.0" in str(f) for f in static.findings)
    numeric = numeric_check(symdsl.load_spec_text(wrong), model, registries=REGISTRIES)
    assert not numeric.ok and "qh.0" in numeric.failed_sites


def test_align_gives_b_back_as_a_llama_with_b_s_function():
    a, b = llama(seed=0, tie_word_embeddings=True), llama(seed=1, tie_word_embeddings=True)
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    aligned = symdsl.align(a, b, max_iter=3)
    with torch.no_grad():
        error = (aligned.model(ids).logits - b(ids).logits).abs().max() / b(ids).logits.abs().max()
    assert type(aligned.model) is type(b) and float(error) < 1e-5
    assert not aligned.model.config.tie_word_embeddings and any("untied" in n for n in aligned.notes)


@pytest.mark.parametrize("cls_name, spec_name", [("LlamaForCausalLM", "hf-llama"), ("Qwen2ForCausalLM", "hf-qwen2")])
def test_symdsl_check_on_a_saved_folder_finds_the_spec_and_passes(cls_name, spec_name, tmp_path, capsys):
    from symdsl.cli.main import main

    llama(cls_name, tie_word_embeddings=True).save_pretrained(tmp_path / "tiny")
    assert main(["check", "--model", str(tmp_path / "tiny")]) == 0
    out = capsys.readouterr().out
    assert f"spec {spec_name}" in out and "static check" in out and "ok: every op respects" in out
    assert "computes in float32 inside" in out and "result: OK" in out


def test_the_draft_for_a_llama_finds_a_rotation_residual_and_passes_its_check():
    from symdsl.infer import check_draft

    draft = symdsl.infer(llama(num_key_value_heads=4))
    groups = {s.key: s.group for s in draft.sites}
    assert groups.get("resid") == "orthogonal" or "orthogonal" in groups.values(), groups
    assert check_draft(draft.text, registries=REGISTRIES, tolerance=1e-5).ok


def test_a_key_bound_primal_is_reported_at_both_projection_bindings():
    # the violation happens at attention, several ops after the weights: the report names the
    # q_proj and k_proj binding lines, not only the site's declaration
    text = Path(symdsl.find_spec("hf-llama").file).read_text()
    wrong = text.replace('"(kv.${i} qk.${i}\') resid\'"', '"(kv.${i} qk.${i}) resid\'"')
    assert wrong != text
    report = static_check(symdsl.load_spec_text(wrong, file="keys.yaml"), llama(), registries=REGISTRIES)
    finding = next(f for f in report.findings if f.op == "scaled_dot_product_attention")
    line = 1 + wrong.splitlines().index(next(x for x in wrong.splitlines() if "k_proj.weight:" in x))
    assert any(e.startswith(f"keys.yaml:{line}:") and "k_proj.weight" in e for e in finding.tensor_entries)
    assert any("q_proj.weight" in e for e in finding.tensor_entries)


def test_a_fold_that_leaves_out_a_reader_is_named():
    text = Path(symdsl.find_spec("hf-llama").file).read_text()
    wrong = text.replace(', "layers.${i}.self_attn.k_proj.weight",\n                "layers.${i}.self_attn.v_proj.weight"]',
                         ', "layers.${i}.self_attn.k_proj.weight"]')
    assert wrong != text
    report = numeric_check(symdsl.load_spec_text(wrong, file="fold.yaml"), llama(), registries=REGISTRIES)
    assert not report.ok and report.canonicalize_error > 1e-3
    assert report.canonicalize_step.startswith("fold.yaml:")
    assert "fold_layernorm" in report.canonicalize_step and "model.layers.0.input_layernorm" in report.canonicalize_step
