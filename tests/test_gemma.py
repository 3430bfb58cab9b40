"""Gemma and Gemma 2 (hf-gemma, hf-gemma2): RMSNorm gains stored as offsets from 1 ((1 + weight), in
float32), folded with fold_layernorm's 'gain: one_plus' and restored by symdsl.align; embeddings scaled
by sqrt(hidden_size); GeGLU; explicit head_dim; tied lm_head. Gemma 2's sandwich norms leave the
residual stream only permutations (their gains move with it); attention and final logit softcapping,
query_pre_attn_scalar and a sliding window are exercised by the tiny configs."""
from __future__ import annotations

import pytest
import torch

import symdsl
from conftest import REGISTRIES
from decoder_families import edited_spec, hidden_element_distances, learned_run, tiny
from symdsl.canon import canonicalize
from symdsl.check.numeric import numeric_check
from symdsl.check.static import static_check
from symdsl.spec import resolve

CONFIG = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              head_dim=16, vocab_size=64, max_position_embeddings=32, bos_token_id=0, eos_token_id=0, pad_token_id=0)
# Gemma 2 extras, small enough to matter on 8 tokens: softcaps near the logits' size, a 4-token window
GEMMA2 = dict(sliding_window=4, query_pre_attn_scalar=16, attn_logit_softcapping=5.0, final_logit_softcapping=3.0)
FAMILIES = {"hf-gemma": ("GemmaForCausalLM", {}), "hf-gemma2": ("Gemma2ForCausalLM", GEMMA2)}
IDS = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))


def gemma(spec_name: str = "hf-gemma", seed: int = 0, **overrides):
    """A tiny tied Gemma (2) whose stored norm weights are far from 0 (gains 1 + w in [0.4, 1.6])."""
    cls_name, extra = FAMILIES[spec_name]
    model = tiny(cls_name, {**CONFIG, **extra, **overrides}, seed)
    generator = torch.Generator().manual_seed(100 + seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.copy_(torch.empty(parameter.shape).uniform_(-0.6, 0.6, generator=generator))
    model.tie_weights()
    return model


@pytest.mark.parametrize("spec_name", FAMILIES)
def test_the_spec_matches_and_both_checks_pass(spec_name):
    model = gemma(spec_name)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    spec = symdsl.find_spec(spec_name)
    assert symdsl.api.pipeline.spec_for(None, model, REGISTRIES).name == spec_name
    sites = resolve(spec, model, registries=REGISTRIES).sites
    assert sites["qk.0"].size == 16 and sites["kv.0"].size == 2          # the explicit head_dim, not 32 // 4
    report = numeric_check(spec, model, registries=REGISTRIES)
    # (1 + weight) is computed in float32: the check says so and asks for float32's precision
    assert report.precision == "float32" and report.ok, report.failed
    assert max(s.relative_error for s in report.sites) < 1e-6 and report.canonicalize_error < 1e-6
    static = static_check(spec, model, registries=REGISTRIES)
    assert static.ok, [str(f) for f in static.findings]


def test_folding_one_plus_gains_stores_zero_and_keeps_the_function():
    model = gemma().double()
    resolved = resolve(symdsl.find_spec("hf-gemma"), model, registries=REGISTRIES)
    with torch.no_grad():
        before = model(IDS).logits
        canonicalize(model, resolved)
        after = model(IDS).logits
    for name in ("model.layers.0.input_layernorm.weight", "model.layers.1.post_attention_layernorm.weight",
                 "model.norm.weight"):
        assert torch.count_nonzero(model.get_parameter(name)) == 0, name
    assert float((after - before).abs().max() / before.abs().max()) < 1e-6


def test_folding_gemma_norms_as_plain_gains_fails_the_canonicalize_check():
    # without 'gain: one_plus' the fold reads w as the gain and leaves 1 + 1: not the same function
    wrong = edited_spec("hf-gemma", ("      gain: one_plus\n", ""), (", gain: one_plus}", "}"))
    report = numeric_check(wrong, gemma(), registries=REGISTRIES)
    assert not report.ok and report.canonicalize_error > 0.1


def test_sandwich_norms_reject_a_residual_rotation_where_their_gain_meets_the_stream():
    spec = edited_spec("hf-gemma2", ("resid:      {group: permutation,", "resid:      {group: orthogonal,"))
    model = gemma("hf-gemma2")
    report = static_check(spec, model, registries=REGISTRIES)
    assert not report.ok
    assert {f.module for f in report.findings} == {
        f"model.layers.{i}.{norm}" for i in (0, 1) for norm in ("post_attention_layernorm", "post_feedforward_layernorm")}
    for finding in report.findings:
        assert finding.site == "resid" and "(1 + weight)" in finding.message
        assert "only under permutations" in finding.message and "modeling_gemma2.py" in str(finding)
    assert "resid" in numeric_check(spec, model, registries=REGISTRIES).failed_sites


def test_sandwich_gains_left_in_place_fail_numerically():
    # the sandwich gains must be permuted with the stream: declared invariant, the numeric check fails
    spec = edited_spec("hf-gemma2",
                       ("  layers.${i}.post_attention_layernorm.weight: resid ", "  # "),
                       ("  layers.${i}.post_feedforward_layernorm.weight: resid ", "  # "),
                       ("invariant:\n", "invariant:\n  - layers.${i}.post_attention_layernorm.weight\n"
                                        "  - layers.${i}.post_feedforward_layernorm.weight\n"))
    assert "resid" in numeric_check(spec, gemma("hf-gemma2"), registries=REGISTRIES).failed_sites


@pytest.mark.parametrize("spec_name", FAMILIES)
def test_weight_matching_recovers_a_hidden_element(spec_name):
    before, after = hidden_element_distances(symdsl.find_spec(spec_name), gemma(spec_name))
    assert before > 0.5 and after < 1e-6, (before, after)


@pytest.mark.parametrize("spec_name", FAMILIES)
def test_learned_matching_runs_and_ends_no_worse_than_its_start(spec_name):
    result = learned_run([gemma(spec_name, seed=0), gemma(spec_name, seed=1)])
    assert {"qk.0", "kv.0", "mlp.0", "resid"} <= set(result.info["learned_sites"])
    assert result.info["best_validation"] <= result.info["start_validation"]


@pytest.mark.parametrize("spec_name", FAMILIES)
def test_align_gives_b_back_with_b_s_function(spec_name):
    a, b = gemma(spec_name, seed=0), gemma(spec_name, seed=1)
    aligned = symdsl.align(a, b, max_iter=3)
    with torch.no_grad():
        error = (aligned.model(IDS).logits - b(IDS).logits).abs().max() / b(IDS).logits.abs().max()
    assert type(aligned.model) is type(b) and float(error) < 1e-5
    gain = aligned.model.model.layers[0].input_layernorm.weight
    if spec_name == "hf-gemma2":
        # a permutation commutes with the gains: restored unfolded, B's stored offsets permuted
        original = b.model.layers[0].input_layernorm.weight
        assert torch.allclose(gain.sort().values, original.sort().values, atol=1e-6)
    else:
        # a rotation does not: the gains stay folded (stored 0) and the notes say so
        assert torch.count_nonzero(gain) == 0 and any("stay folded" in note for note in aligned.notes)


@pytest.mark.parametrize("spec_name", FAMILIES)
def test_symdsl_check_on_a_saved_folder_finds_the_spec_and_passes(spec_name, tmp_path, capsys):
    from symdsl.cli.main import main

    gemma(spec_name).save_pretrained(tmp_path / "tiny")
    assert main(["check", "--model", str(tmp_path / "tiny")]) == 0
    out = capsys.readouterr().out
    assert f"spec {spec_name}" in out and "ok: every op respects" in out and "computes in float32 inside" in out
    assert "result: OK" in out


def test_an_unknown_gain_form_is_refused_naming_the_argument():
    spec = edited_spec("hf-gemma", (", gain: one_plus}", ", gain: one_pls}"))
    with pytest.raises(symdsl.errors.SymdslError) as error:
        resolve(spec, gemma(), registries=REGISTRIES)
    message = str(error.value)          # located: key path and line of the step, the allowed forms
    assert "heads.lm.canonicalize.1.fold_layernorm" in message and "argument 'gain'" in message
    assert "'weight' or 'one_plus'" in message
