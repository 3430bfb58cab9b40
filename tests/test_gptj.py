"""GPT-J (hf-gptj): interleaved rotary embeddings (rotate_every_two: pairs (2i, 2i + 1) built from
x[..., ::2], x[..., 1::2], stack and flatten; tables from repeat_interleave) on the first rotary_dim
coordinates of each head, one ln_1 feeding attention and MLP in parallel, lm_head with a bias."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import symdsl
from conftest import REGISTRIES
from decoder_families import edited_spec, hidden_element_distances, learned_run, tiny
from symdsl.check.numeric import numeric_check
from symdsl.check.static import static_check
from symdsl.graph import capture
from symdsl.graph.propagate import propagate
from symdsl.spec import load_spec_text, resolve

CONFIG = dict(n_embd=32, n_layer=2, n_head=4, rotary_dim=4, vocab_size=64, n_positions=32, bos_token_id=0,
              eos_token_id=0)
ROTARY = 'qk.${i}:    {group: rotary, size: r, per: "heads.${i}", pairs: interleaved,'


def gptj(seed: int = 0, **overrides):
    return tiny("GPTJForCausalLM", {**CONFIG, **overrides}, seed)


@pytest.mark.parametrize("overrides", [{}, {"rotary_dim": 2}, {"rotary_dim": 8}])     # partial, one pair, full
def test_the_spec_matches_and_both_checks_pass(overrides):
    model = gptj(**overrides)
    spec = symdsl.find_spec("hf-gptj")
    assert symdsl.api.pipeline.spec_for(None, model, REGISTRIES).name == "hf-gptj"
    sites = resolve(spec, model, registries=REGISTRIES).sites
    assert sites["qk.0"].options == {"pairs": "interleaved"} and sites["qk.0"].size == overrides.get("rotary_dim", 4)
    assert ("qkp.0" in sites) == (overrides.get("rotary_dim", 4) < 8)
    report = numeric_check(spec, model, registries=REGISTRIES)
    assert report.ok, report.failed
    assert max(s.relative_error for s in report.sites) < 1e-12
    static = static_check(spec, model, registries=REGISTRIES)
    assert static.ok, [str(f) for f in static.findings]


@pytest.mark.parametrize("replacement, words", [
    ('qk.${i}:    {group: rotary, size: r, per: "heads.${i}",', "set 'pairs: interleaved'"),
    ('qk.${i}:    {group: invertible, size: r, per: "heads.${i}",',
     "an invertible map does not commute with it (only one scaled rotation per pair does): declare the site "
     "'group: rotary' with 'pairs: interleaved'"),
])
def test_the_half_layout_or_an_invertible_map_is_rejected_at_the_interleaved_rope(replacement, words):
    spec = edited_spec("hf-gptj", (ROTARY, replacement))
    report = static_check(spec, gptj(), registries=REGISTRIES)
    assert not report.ok
    assert {f.op for f in report.findings} == {"mul", "flatten"} and {f.site for f in report.findings} == {"qk.0"}
    for f in report.findings:
        assert words in f.message and "2i with 2i + 1" in f.message
        assert f.op != "flatten" or f.message.startswith("rotate_every_two (the rotary position embedding)")
    assert {"qk.0", "qk.1"} <= set(numeric_check(spec, gptj(), registries=REGISTRIES).failed_sites)


def test_weight_matching_recovers_a_hidden_element():
    before, after = hidden_element_distances(symdsl.find_spec("hf-gptj"), gptj())
    assert before > 0.5 and after < 1e-6, (before, after)


def test_learned_matching_runs_and_ends_no_worse_than_its_start():
    result = learned_run([gptj(seed=0), gptj(seed=1)])
    assert {"qk.0", "qkp.0", "resid"} <= set(result.info["learned_sites"])
    assert result.info["best_validation"] <= result.info["start_validation"]


def test_symdsl_check_on_a_saved_folder_finds_the_spec_and_passes(tmp_path, capsys):
    from symdsl.cli.main import main

    gptj().save_pretrained(tmp_path / "tiny")
    assert main(["check", "--model", str(tmp_path / "tiny")]) == 0
    out = capsys.readouterr().out
    assert "spec hf-gptj" in out and "ok: every op respects" in out and "result: OK" in out


# ----------------------------------------------------------------------------- the interleaved rules

D, K = 8, 4


class EveryTwo(nn.Module):
    """One query/key head with GPT-J's RoPE; ``variant`` breaks one piece of the pattern."""

    def __init__(self, variant: str = "gptj"):
        super().__init__()
        torch.manual_seed(0)
        self.q, self.k = nn.Linear(D, K, bias=False), nn.Linear(D, K, bias=False)
        self.variant = variant

    def turn(self, x):
        x1, x2 = x[..., ::2], x[..., 1::2]
        if self.variant == "reflection":               # (a, b) -> (a, -b): not a complex scalar
            return torch.stack((x1, -x2), dim=-1).flatten(-2)
        if self.variant == "piece-escapes":
            return torch.stack((-x2, x1), dim=-1).flatten(-2) + x1.repeat_interleave(2, -1)
        return torch.stack((-x2, x1), dim=-1).flatten(-2)

    def forward(self, input):
        t = torch.arange(input.shape[1], dtype=input.dtype)
        freqs = t[:, None] / 10000 ** (torch.arange(0, K, 2, dtype=input.dtype) / K)     # (t, K/2)
        if self.variant == "half-tables":
            s, c = freqs.sin(), freqs.cos()
            sin, cos = torch.cat((s, s), -1), torch.cat((c, c), -1)             # pairs (i, i + K/2)
        else:
            sin, cos = freqs.sin().repeat_interleave(2, -1), freqs.cos().repeat_interleave(2, -1)
        q, k = self.q(input), self.k(input)
        q, k = q * cos + self.turn(q) * sin, k * cos + self.turn(k) * sin
        return q @ k.transpose(-1, -2)


def findings(variant: str = "gptj", group: str = "rotary", options: str = ", pairs: interleaved"):
    model = EveryTwo(variant).double().eval()
    spec = load_spec_text(f"{{symdsl: 1, name: rope, sites: {{qk: {{group: {group}, size: {K}{options}}}}}, "
                          "tensors: {q.weight: qk _, k.weight: qk' _}}")
    graph = capture(model, {"input": torch.randn(2, 5, D, dtype=torch.float64)})
    result = propagate(graph, resolve(spec, model, registries=REGISTRIES), op_rules=REGISTRIES.op_rules)
    return [(f.op, f.message) for f in result.findings]


def test_an_interleaved_rotary_site_passes_rotate_every_two_and_repeat_interleaved_tables():
    assert findings() == []


def test_a_reflection_is_not_rotate_every_two_and_its_strided_slices_fail_closed():
    found = findings("reflection")
    assert found and found[0][0] == "slice" and "slice takes part of this axis" in found[0][1]


def test_a_strided_piece_used_elsewhere_fails_closed():
    assert any(op == "slice" for op, _ in findings("piece-escapes"))


def test_half_layout_tables_on_an_interleaved_site_are_rejected():
    found = findings("half-tables")
    assert any(op == "mul" and "set 'pairs: half'" in m for op, m in found)


def test_the_half_layout_site_is_rejected_at_rotate_every_two():
    found = findings(options="")
    assert {op for op, _ in found} == {"mul", "flatten"}
    assert all("set 'pairs: interleaved'" in m for _, m in found)
