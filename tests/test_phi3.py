"""Phi-3 (hf-phi3): fused qkv_proj with unequal parts under grouped-query attention
([queries | keys | values], sliced apart), fused gate_up_proj ([mlp | mlp], chunk(2)), RMSNorm
folded under a full rotation, rotary query/key maps, and partial rotary (partial_rotary_factor):
each head's q and k as [rotary part | pass-through part], nested inside the fused parts."""
from __future__ import annotations

import pytest
import torch

import symdsl
from conftest import REGISTRIES
from decoder_families import edited_spec, hidden_element_distances, learned_run, tiny
from symdsl.check.numeric import numeric_check
from symdsl.check.static import static_check
from symdsl.spec import resolve

CONFIG = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              vocab_size=64, max_position_embeddings=32, partial_rotary_factor=0.5, bos_token_id=0, eos_token_id=0,
              pad_token_id=0)
QKV = "[(kv.${i} qh.${i} [qk.${i} | qkp.${i}]) | (kv.${i} [qk.${i}' | qkp.${i}']) | kv.${i} ov.${i}]"


def phi3(seed: int = 0, **overrides):
    model = tiny("Phi3ForCausalLM", {**CONFIG, **overrides}, seed)
    if model.config.tie_word_embeddings:
        model.tie_weights()
    return model


CASES = [
    {},                                                     # partial rotary: r = 4 of k = 8
    {"partial_rotary_factor": 1.0},                          # Phi-3's full rotary: qkp is empty, dropped
    {"num_key_value_heads": 4},                              # plain multi-head attention
    {"tie_word_embeddings": True},
]


@pytest.mark.parametrize("overrides", CASES)
def test_the_spec_matches_and_its_symmetries_hold_to_the_model_s_own_precision(overrides):
    model = phi3(**overrides)
    spec = symdsl.find_spec("hf-phi3")
    assert symdsl.api.pipeline.spec_for(None, model, REGISTRIES).name == "hf-phi3"
    sites = resolve(spec, model, registries=REGISTRIES).sites
    assert sites["qk.0"].size == (8 if overrides.get("partial_rotary_factor") == 1.0 else 4)
    assert ("qkp.0" in sites) == (overrides.get("partial_rotary_factor") != 1.0)
    report = numeric_check(spec, model, registries=REGISTRIES)
    # transformers' RMSNorm computes in float32 even in a float64 run (see test_llama.py)
    assert report.precision == "float32" and report.ok, report.failed
    assert max(s.relative_error for s in report.sites) < 1e-6
    static = static_check(spec, model, registries=REGISTRIES)
    assert static.ok, [str(f) for f in static.findings]


def test_the_fused_axes_bind_with_unequal_parts_and_nested_rotary_parts():
    binding = resolve(symdsl.find_spec("hf-phi3"), phi3(), registries=REGISTRIES).tensors[
        "model.layers.0.self_attn.qkv_proj.weight"]
    rows = binding.axes[0]
    assert [[f.site or f.dim for f in p] for p in rows.parts] == [
        ["kv.0", "qh.0", "qk.0"], ["kv.0", "qh.0", "qkp.0"], ["kv.0", "qk.0"], ["kv.0", "qkp.0"], ["kv.0", "ov.0"]]
    assert rows.nest == ((2, 2), (2, 1), (1, 0)) and rows.size == 4 * 8 + 2 * 8 + 2 * 8


def test_keys_bound_primal_fail_both_checks():
    spec = edited_spec("hf-phi3", (QKV, QKV.replace("[qk.${i}' | qkp.${i}']", "[qk.${i} | qkp.${i}']")))
    assert not static_check(spec, phi3(), registries=REGISTRIES).ok
    assert "qk.0" in numeric_check(spec, phi3(), registries=REGISTRIES).failed_sites


def test_the_rotary_part_declared_invertible_fails_at_the_rope_nodes():
    spec = edited_spec("hf-phi3", ("qk.${i}:    {group: rotary,", "qk.${i}:    {group: invertible,"))
    report = static_check(spec, phi3(), registries=REGISTRIES)
    assert not report.ok and {f.op for f in report.findings} == {"mul", "cat"}
    assert {f.site for f in report.findings} == {"qk.0"}


def test_fused_parts_in_the_wrong_order_are_rejected_where_qkv_is_sliced():
    # values before keys: the slice for the keys now covers the values' part
    wrong = "[(kv.${i} qh.${i} [qk.${i} | qkp.${i}]) | kv.${i} ov.${i} | (kv.${i} [qk.${i}' | qkp.${i}'])]"
    report = static_check(edited_spec("hf-phi3", (QKV, wrong)), phi3(), registries=REGISTRIES)
    assert not report.ok
    first = report.findings[0]
    assert first.op == "slice" and first.site == "ov.0" and "slice takes part of this axis" in first.message


@pytest.mark.parametrize("overrides", [{}, {"partial_rotary_factor": 1.0}])
def test_weight_matching_recovers_a_hidden_element(overrides):
    before, after = hidden_element_distances(symdsl.find_spec("hf-phi3"), phi3(**overrides))
    assert before > 0.5 and after < 1e-6, (before, after)


def test_learned_matching_runs_and_ends_no_worse_than_its_start():
    result = learned_run([phi3(seed=0), phi3(seed=1)])
    assert {"qk.0", "qkp.0", "kv.0", "mlp.0", "resid"} <= set(result.info["learned_sites"])
    assert result.info["best_validation"] <= result.info["start_validation"]


def test_symdsl_check_on_a_saved_folder_finds_the_spec_and_passes(tmp_path, capsys):
    from symdsl.cli.main import main

    phi3().save_pretrained(tmp_path / "tiny")
    assert main(["check", "--model", str(tmp_path / "tiny")]) == 0
    out = capsys.readouterr().out
    assert "spec hf-phi3" in out and "ok: every op respects" in out and "result: OK" in out
