"""GPT-NeoX (hf-gpt-neox): a fused query_key_value laid out per head, (heads [q | k | v]), with
partial rotary embeddings splitting each head's q and k into a rotary part (group rotary) and a
pass-through part (group invertible): (heads [qk | qkp | qk' | qkp' | ov]). LayerNorm with biases
(orthogonal residual fixing the ones vector), parallel or sequential residual, untied lm_head."""
from __future__ import annotations

import pytest

import symdsl
from conftest import REGISTRIES
from decoder_families import edited_spec, hidden_element_distances, learned_run, tiny
from symdsl.check.numeric import numeric_check
from symdsl.check.static import static_check
from symdsl.spec import resolve

CONFIG = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, vocab_size=64,
              max_position_embeddings=32, rotary_pct=0.5, bos_token_id=0, eos_token_id=0)
QKV = "[qk.${i} | qkp.${i} | qk.${i}' | qkp.${i}' | ov.${i}]"


def neox(seed: int = 0, **overrides):
    return tiny("GPTNeoXForCausalLM", {**CONFIG, **overrides}, seed)


CASES = [
    {},                                          # rotary_pct 0.5: r = 4 of k = 8
    {"rotary_pct": 0.25},                        # Pythia's: one frequency pair of 8
    {"use_parallel_residual": False},            # sequential residual
    {"rotary_pct": 1.0},                         # full rotary: the pass-through site is empty, dropped
]


@pytest.mark.parametrize("overrides", CASES)
def test_the_spec_matches_and_both_checks_pass(overrides):
    model = neox(**overrides)
    spec = symdsl.find_spec("hf-gpt-neox")
    assert symdsl.api.pipeline.spec_for(None, model, REGISTRIES).name == "hf-gpt-neox"
    sites = resolve(spec, model, registries=REGISTRIES).sites
    assert {"qk.0", "qk.1", "ov.0", "heads.1", "resid"} <= set(sites)
    assert ("qkp.0" in sites) == (overrides.get("rotary_pct", 0.5) < 1)
    report = numeric_check(spec, model, registries=REGISTRIES)
    assert report.ok, report.failed
    assert max(s.relative_error for s in report.sites) < 1e-12         # everything on the float64 path
    static = static_check(spec, model, registries=REGISTRIES)
    assert static.ok, [str(f) for f in static.findings]


def test_the_rotary_sites_are_per_head_and_sized_by_rotary_ndims():
    sites = resolve(symdsl.find_spec("hf-gpt-neox"), neox(rotary_pct=0.25), registries=REGISTRIES).sites
    assert (sites["qk.0"].kind.name, sites["qk.0"].size, sites["qk.0"].per) == ("rotary", 2, "heads.0")
    assert (sites["qkp.0"].kind.name, sites["qkp.0"].size, sites["qkp.0"].batch) == ("invertible", 6, (4,))


def test_the_pass_through_part_declared_rotary_and_the_rotary_part_invertible_fail_at_the_rope_nodes():
    # the two parts swapped (equal sizes at rotary_pct 0.5): the rotary coordinates carry the
    # invertible site, which RoPE's multiply and rotate_half reject, naming their nodes
    spec = edited_spec("hf-gpt-neox", (QKV, "[qkp.${i} | qk.${i} | qkp.${i}' | qk.${i}' | ov.${i}]"))
    report = static_check(spec, neox(), registries=REGISTRIES)
    assert not report.ok
    assert {f.op for f in report.findings} == {"mul", "cat"} and {f.site for f in report.findings} == {"qkp.0"}
    for f in report.findings:
        assert f.node and "an invertible map does not commute with it" in f.message
        assert f.message.startswith(("mul by a rotary cos/sin table", "rotate_half (the rotary position embedding)"))
    numeric = numeric_check(spec, neox(), registries=REGISTRIES)
    assert {"qkp.0", "qkp.1"} <= set(numeric.failed_sites) and "qk.0" not in numeric.failed_sites


def test_the_rotary_part_declared_invertible_fails_at_the_rope_nodes():
    spec = edited_spec("hf-gpt-neox", ('qk.${i}:    {group: rotary,', 'qk.${i}:    {group: invertible,'))
    report = static_check(spec, neox(), registries=REGISTRIES)
    assert not report.ok and {f.op for f in report.findings} == {"mul", "cat"}
    assert all("declare the site 'group: rotary'" in f.message for f in report.findings)
    assert not numeric_check(spec, neox(), registries=REGISTRIES).ok


def test_a_rotary_site_over_the_whole_head_fails_at_the_slice_of_the_rotary_part():
    # rotary over all k coordinates: RoPE only turns q[..., :r]; the slice cuts the site's axis
    spec = edited_spec("hf-gpt-neox", (QKV, "[qk.${i} | qk.${i}' | ov.${i}]"), ("size: r, per", "size: k, per"),
                       ("  qkp.${i}:", "  # qkp.${i}:"))
    report = static_check(spec, neox(), registries=REGISTRIES)
    assert not report.ok
    first = report.findings[0]
    assert first.op == "slice" and first.site == "qk.0" and "slice takes part of this axis" in first.message
    numeric = numeric_check(spec, neox(), registries=REGISTRIES)
    assert {"qk.0", "qk.1"} <= set(numeric.failed_sites)


def test_keys_bound_primal_in_the_fused_projection_fail_both_checks():
    spec = edited_spec("hf-gpt-neox", (QKV, "[qk.${i} | qkp.${i} | qk.${i} | qkp.${i}' | ov.${i}]"))
    assert not static_check(spec, neox(), registries=REGISTRIES).ok
    assert "qk.0" in numeric_check(spec, neox(), registries=REGISTRIES).failed_sites


@pytest.mark.parametrize("overrides", [{}, {"rotary_pct": 0.25}])
def test_weight_matching_recovers_a_hidden_element(overrides):
    before, after = hidden_element_distances(symdsl.find_spec("hf-gpt-neox"), neox(**overrides))
    assert before > 0.5 and after < 1e-6, (before, after)


def test_learned_matching_runs_and_ends_no_worse_than_its_start():
    result = learned_run([neox(seed=0), neox(seed=1)])
    assert {"qk.0", "qkp.0", "heads.0", "resid"} <= set(result.info["learned_sites"])
    assert result.info["best_validation"] <= result.info["start_validation"]


def test_symdsl_check_on_a_saved_folder_finds_the_spec_and_passes(tmp_path, capsys):
    from symdsl.cli.main import main

    neox(rotary_pct=0.25).save_pretrained(tmp_path / "tiny")
    assert main(["check", "--model", str(tmp_path / "tiny")]) == 0
    out = capsys.readouterr().out
    assert "spec hf-gpt-neox" in out and "ok: every op respects" in out and "result: OK" in out
