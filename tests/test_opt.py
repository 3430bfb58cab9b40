"""OPT (hf-opt): pre-LayerNorm with biases (folded, writers centred, residual rotations fixing the
ones vector), learned positional embeddings with an offset of 2, ReLU MLP, per-head invertible q/k and
v/o maps with their biases (no RoPE), q scaled by head_dim^-0.5, tied lm_head. Post-LayerNorm OPT
(OPT-350m's do_layer_norm_before=False, project_in/project_out) is refused with located errors."""
from __future__ import annotations

import pytest
import torch

import symdsl
from conftest import REGISTRIES
from decoder_families import edited_spec, hidden_element_distances, learned_run, tiny
from symdsl.check.numeric import numeric_check
from symdsl.check.static import static_check
from symdsl.errors import SymdslError
from symdsl.spec import resolve

CONFIG = dict(hidden_size=32, ffn_dim=48, num_hidden_layers=2, num_attention_heads=4, vocab_size=64,
              max_position_embeddings=32, word_embed_proj_dim=32, bos_token_id=0, eos_token_id=0, pad_token_id=1)


def opt(seed: int = 0, **overrides):
    model = tiny("OPTForCausalLM", {**CONFIG, **overrides}, seed)
    model.tie_weights()
    return model


def test_the_spec_matches_and_both_checks_pass():
    model = opt()
    assert model.lm_head.weight is model.model.decoder.embed_tokens.weight
    spec = symdsl.find_spec("hf-opt")
    assert symdsl.api.pipeline.spec_for(None, model, REGISTRIES).name == "hf-opt"
    resolved = resolve(spec, model, registries=REGISTRIES)
    assert resolved.tensors["model.decoder.embed_positions.weight"].axes[0].size == 32 + 2     # OPT's offset
    report = numeric_check(spec, model, registries=REGISTRIES)
    assert report.ok, report.failed
    # OPT's position ids come from a float32 mask, so the check asks for float32's precision; the
    # data path is float64, and the symmetries hold to float64 rounding
    assert max(s.relative_error for s in report.sites) < 1e-12 and report.canonicalize_error < 1e-12
    static = static_check(spec, model, registries=REGISTRIES)
    assert static.ok, [str(f) for f in static.findings]


def test_an_unconstrained_residual_rotation_fails_at_the_layernorm():
    spec = edited_spec("hf-opt", ("preserve: ones, ", ""))
    report = static_check(spec, opt(), registries=REGISTRIES)
    assert not report.ok and report.findings[0].site == "resid"
    assert "resid" in numeric_check(spec, opt(), registries=REGISTRIES).failed_sites


def test_the_query_bias_must_take_the_primal_map():
    # (the key bias adds q . b_k, the same for every key, which softmax ignores: only the static
    # check sees its variance; the query bias shifts every score)
    spec = edited_spec("hf-opt", ('q_proj.bias: "(heads.${i} qk.${i})"', 'q_proj.bias: "(heads.${i} qk.${i}\')"'))
    assert not static_check(spec, opt(), registries=REGISTRIES).ok
    assert "qk.0" in numeric_check(spec, opt(), registries=REGISTRIES).failed_sites


POST_LN = {"do_layer_norm_before": False, "word_embed_proj_dim": 16}                  # OPT-350m's layout


def test_post_layernorm_opt_is_matched_by_its_own_spec_and_refused_by_the_pre_ln_one():
    model = opt(**POST_LN)
    assert symdsl.api.pipeline.spec_for(None, model, REGISTRIES).name == "hf-opt-postln"
    assert symdsl.api.pipeline.spec_for(None, opt(), REGISTRIES).name == "hf-opt"
    with pytest.raises(SymdslError) as error:                   # named explicitly: refused, located
        resolve(symdsl.find_spec("hf-opt"), model, registries=REGISTRIES)
    message = str(error.value)
    assert "hf-opt.yaml" in message and "matches.config.do_layer_norm_before" in message
    assert "do_layer_norm_before = True, but this model's is False" in message
    with pytest.raises(SymdslError, match="do_layer_norm_before = False, but this model's is True"):
        resolve(symdsl.find_spec("hf-opt-postln"), opt(), registries=REGISTRIES)


def test_post_layernorm_opt_keeps_permutations_of_the_stream_and_rotations_of_the_word_embeddings():
    model = opt(**POST_LN)
    spec = symdsl.find_spec("hf-opt-postln")
    sites = resolve(spec, model, registries=REGISTRIES).sites
    assert sites["wemb"].size == 16 and sites["resid"].size == 32
    report = numeric_check(spec, model, registries=REGISTRIES)
    assert report.ok and max(s.relative_error for s in report.sites) < 1e-12, report.failed
    assert static_check(spec, model, registries=REGISTRIES).ok
    # a rotation of the stream meets the post-LN LayerNorm, whose gain stays on the stream
    rotated = edited_spec("hf-opt-postln", ("resid:      {group: permutation,", "resid:      {group: orthogonal,"))
    static = static_check(rotated, model, registries=REGISTRIES)
    assert not static.ok and static.findings[0].module == "model.decoder.layers.0.self_attn_layer_norm"
    assert "resid" in numeric_check(rotated, model, registries=REGISTRIES).failed_sites
    before, after = hidden_element_distances(spec, opt(**POST_LN))
    assert before > 0.5 and after < 1e-6, (before, after)


def test_post_layernorm_opt_without_projections_is_refused_naming_them():
    with pytest.raises(SymdslError) as error:
        resolve(symdsl.find_spec("hf-opt-postln"), opt(do_layer_norm_before=False), registries=REGISTRIES)
    assert "model.decoder.project_in.weight" in str(error.value) and "hf-opt-postln.yaml" in str(error.value)


def test_weight_matching_recovers_a_hidden_element():
    before, after = hidden_element_distances(symdsl.find_spec("hf-opt"), opt())
    assert before > 0.5 and after < 1e-6, (before, after)


def test_learned_matching_runs_and_ends_no_worse_than_its_start():
    result = learned_run([opt(seed=0), opt(seed=1)])
    assert {"qk.0", "ov.0", "heads.0", "mlp.0", "resid"} <= set(result.info["learned_sites"])
    assert result.info["best_validation"] <= result.info["start_validation"]


def test_symdsl_check_on_a_saved_folder_finds_the_spec_and_passes(tmp_path, capsys):
    from symdsl.cli.main import main

    opt().save_pretrained(tmp_path / "tiny")
    assert main(["check", "--model", str(tmp_path / "tiny")]) == 0
    out = capsys.readouterr().out
    assert "spec hf-opt" in out and "ok: every op respects" in out and "result: OK" in out
