"""Qwen3 (hf-qwen3): hf-llama's structure plus per-head q_norm/k_norm (RMSNorm over head_dim, one gain
shared by all heads, between the projection and RoPE, not foldable). Which maps of a head's q/k
coordinates survive is measured on the model first (a pair sign flip does, a rotation within a pair of
unequal gains does not), and the spec declares only head permutations there; the static check rejects
more at the q_norm/k_norm nodes."""
from __future__ import annotations

import math

import pytest
import torch

import symdsl
from conftest import REGISTRIES
from decoder_families import edited_spec, hidden_element_distances, learned_run, tiny
from symdsl.check.numeric import numeric_check
from symdsl.check.static import static_check

CONFIG = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              head_dim=8, vocab_size=64, max_position_embeddings=32, bos_token_id=0, eos_token_id=0, pad_token_id=0)
IDS = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))


def qwen3(seed: int = 0, **overrides):
    model = tiny("Qwen3ForCausalLM", {**CONFIG, **overrides}, seed)
    if model.config.tie_word_embeddings:
        model.tie_weights()
    return model


@pytest.mark.parametrize("overrides", [{}, {"tie_word_embeddings": True}, {"num_key_value_heads": 4}])
def test_the_spec_matches_and_both_checks_pass(overrides):
    model = qwen3(**overrides)
    spec = symdsl.find_spec("hf-qwen3")
    assert symdsl.api.pipeline.spec_for(None, model, REGISTRIES).name == "hf-qwen3"
    report = numeric_check(spec, model, registries=REGISTRIES)
    # the RMSNorms (q_norm and k_norm too) compute in float32 inside a float64 run
    assert report.precision == "float32" and report.ok, report.failed
    assert max(s.relative_error for s in report.sites) < 1e-6
    static = static_check(spec, model, registries=REGISTRIES)
    assert static.ok, [str(f) for f in static.findings]


def _turn_pair(model, pair: int, angle: float, kv: int = 0) -> torch.nn.Module:
    """Rotate coordinates (pair, pair + k/2) of key/value head ``kv`` by ``angle`` on the keys and of
    its query heads on the queries (a rotation is its own inverse transpose), in layer 0."""
    attention = model.model.layers[0].self_attn
    k, g = CONFIG["head_dim"], CONFIG["num_attention_heads"] // CONFIG["num_key_value_heads"]
    turn = torch.eye(k, dtype=torch.float64)
    a, b = pair, pair + k // 2
    turn[a, a] = turn[b, b] = math.cos(angle)
    turn[a, b], turn[b, a] = -math.sin(angle), math.sin(angle)
    with torch.no_grad():
        for head in [kv * g + j for j in range(g)]:                         # q_proj rows: (h k) by d
            rows = attention.q_proj.weight[head * k:(head + 1) * k]
            rows.copy_(turn @ rows)
        rows = attention.k_proj.weight[kv * k:(kv + 1) * k]                 # k_proj rows: (kvh k) by d
        rows.copy_(turn @ rows)
    return model


def _moved(model, edit) -> float:
    model = model.double()
    with torch.no_grad():
        before = model(IDS).logits
        after = edit(model)(IDS).logits
    return float((after - before).abs().max() / before.abs().max())


def test_only_sign_flips_of_whole_pairs_survive_the_query_key_norms():
    # why the spec declares no q/k map: measured on the model, not assumed
    flip = _moved(qwen3(), lambda m: _turn_pair(m, 1, math.pi))
    turn = _moved(qwen3(), lambda m: _turn_pair(m, 1, 0.7))
    assert flip < 1e-6                                  # angle pi: -1 on the pair commutes with every gain
    assert turn > 1e-3                                  # another angle, unequal gains on the pair: broken
    # with equal gains on the pair the same rotation holds: the gain, not RoPE, is what breaks it
    def equalize(m):
        for norm in (m.model.layers[0].self_attn.q_norm, m.model.layers[0].self_attn.k_norm):
            norm.weight.data[1 + CONFIG["head_dim"] // 2] = norm.weight.data[1]
        return m
    base = equalize(qwen3().double())
    assert _moved(base, lambda m: _turn_pair(m, 1, 0.7)) < 1e-6


QK_SITE = ('  ov.${i}:', '  qk.${i}:    {group: GROUP, size: k, per: "kv.${i}"}\n  ov.${i}:')
Q_ROWS = ('"(kv.${i} qh.${i} k) resid\'"', '"(kv.${i} qh.${i} qk.${i}) resid\'"')
K_ROWS = ('"(kv.${i} k) resid\'"', '"(kv.${i} qk.${i}\') resid\'"')


@pytest.mark.parametrize("group, op, why", [
    ("rotary", "mean", "only isometric kinds"),                  # scales change the norm's sum of squares
    ("invertible", "mean", "only isometric kinds"),
    ("orthogonal", "mul", "per-feature gain"),                   # keeps the norm, not the gain
])
def test_a_query_key_map_is_rejected_at_the_q_norm_and_k_norm_nodes(group, op, why):
    spec = edited_spec("hf-qwen3", (QK_SITE[0], QK_SITE[1].replace("GROUP", group)), Q_ROWS, K_ROWS)
    model = qwen3()
    report = static_check(spec, model, registries=REGISTRIES)
    assert not report.ok
    assert {f.module for f in report.findings} == {"model.layers.0.self_attn.q_norm", "model.layers.0.self_attn.k_norm"}
    for finding in report.findings:
        assert finding.op == op and finding.site == "qk.0" and why in finding.message
        assert "self_attn.q_norm" in str(finding) or "self_attn.k_norm" in str(finding)
    assert {"qk.0", "qk.1"} <= set(numeric_check(spec, model, registries=REGISTRIES).failed_sites)


def test_weight_matching_recovers_a_hidden_element():
    before, after = hidden_element_distances(symdsl.find_spec("hf-qwen3"), qwen3(tie_word_embeddings=True))
    assert before > 0.5 and after < 1e-6, (before, after)


def test_learned_matching_runs_and_ends_no_worse_than_its_start():
    result = learned_run([qwen3(seed=0), qwen3(seed=1)])
    assert {"kv.0", "ov.0", "mlp.0", "resid"} <= set(result.info["learned_sites"])
    assert result.info["best_validation"] <= result.info["start_validation"]


def test_symdsl_check_on_a_saved_folder_finds_the_spec_and_passes(tmp_path, capsys):
    from symdsl.cli.main import main

    qwen3(tie_word_embeddings=True).save_pretrained(tmp_path / "tiny")
    assert main(["check", "--model", str(tmp_path / "tiny")]) == 0
    out = capsys.readouterr().out
    assert "spec hf-qwen3" in out and "ok: every op respects" in out and "computes in float32 inside" in out
    assert "result: OK" in out
