"""Mixtral (hf-mixtral): a sparse mixture of experts under its symmetries. Expert permutations move
the router's rows with the stacked expert weights; each expert's SwiGLU units have their own
permutation, declared ``per`` the expert permutation. Checked statically (topk, the gather of the
selected experts' weights), numerically in float64 (the experts switched to transformers'
``batched_mm`` kernel, which has a float64 path), and by weight-matching recovery."""
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
from symdsl.models.kernels import EXACT_EXPERTS, experts_implementation, use_exact_kernels
from symdsl.spec import resolve

CONFIG = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              num_local_experts=4, num_experts_per_tok=2, vocab_size=64, max_position_embeddings=32, bos_token_id=0,
              eos_token_id=0, pad_token_id=0)


def mixtral(seed: int = 0, **overrides):
    import transformers

    torch.manual_seed(seed)
    with quiet_transformers():
        model = transformers.MixtralForCausalLM(transformers.MixtralConfig(**{**CONFIG, **overrides}))
    return perturb_parameters(model, seed=seed).eval()


def spec_text() -> str:
    return Path(symdsl.find_spec("hf-mixtral").file).read_text()


def edited(old: str, new: str):
    text = spec_text()
    assert old in text
    return symdsl.load_spec_text(text.replace(old, new))


ROUTER = 'layers.${i}.mlp.gate.weight: "experts.${i} resid\'"'
GATE_UP = 'layers.${i}.mlp.experts.gate_up_proj: "experts.${i} [mlp.${i} | mlp.${i}] resid\'"'
DOWN = 'layers.${i}.mlp.experts.down_proj: "experts.${i} resid mlp.${i}\'"'
MLP_SITE = 'mlp.${i}:     {group: permutation, size: f, per: "experts.${i}",'


def test_the_state_dict_stores_experts_stacked_and_the_spec_binds_them():
    model = mixtral()
    shapes = {n: tuple(t.shape) for n, t in model.state_dict().items() if ".layers.0.mlp." in n}
    assert shapes == {"model.layers.0.mlp.gate.weight": (4, 32), "model.layers.0.mlp.experts.gate_up_proj": (4, 96, 32),
                      "model.layers.0.mlp.experts.down_proj": (4, 32, 48)}
    resolved = resolve(symdsl.find_spec("hf-mixtral"), model, registries=REGISTRIES)
    mlp = resolved.sites["mlp.0"]
    assert (resolved.sites["experts.0"].kind.name, resolved.sites["experts.0"].size) == ("permutation", 4)
    assert (mlp.kind.name, mlp.size, mlp.per, mlp.batch) == ("permutation", 48, "experts.0", (4,))
    assert resolved.children("experts.0") == ["mlp.0"]


def test_the_spec_matches_and_every_symmetry_holds_in_float64_to_the_model_s_own_precision():
    model = mixtral()
    assert experts_implementation(model) != EXACT_EXPERTS      # transformers' default: a grouped matmul, no float64
    assert symdsl.api.pipeline.spec_for(None, model, REGISTRIES).name == "hf-mixtral"
    report = numeric_check(symdsl.find_spec("hf-mixtral"), model, registries=REGISTRIES)
    assert experts_implementation(model) != EXACT_EXPERTS      # the check switched its copy, not the caller's model
    assert any(EXACT_EXPERTS in note for note in report.notes)
    # RMSNorm and the router's softmax compute in float32 inside a float64 run: 100 float32 rounding units
    assert report.precision == "float32" and report.tolerance == pytest.approx(100 * torch.finfo(torch.float32).eps)
    assert report.ok, report.failed
    sites = {s.site: s.relative_error for s in report.sites}
    assert {"experts.0", "experts.1", "mlp.0", "mlp.1", "*"} <= set(sites)
    assert max(sites.values()) < 1e-6
    assert sites["mlp.0"] < 1e-12            # per-expert unit permutations: exact


def test_the_static_check_follows_the_routing_and_the_gathered_experts():
    report = static_check(symdsl.find_spec("hf-mixtral"), mixtral(), registries=REGISTRIES)
    assert report.ok, [str(f) for f in report.findings]
    assert any(EXACT_EXPERTS in note for note in report.notes)


def test_experts_permuted_without_the_router_rows_fail_at_the_gather_in_both_checks():
    spec = edited(ROUTER, 'layers.${i}.mlp.gate.weight: "_ resid\'"')
    report = static_check(spec, mixtral(), registries=REGISTRIES)
    assert not report.ok and {f.op for f in report.findings} == {"index"}
    for finding in report.findings:
        assert finding.site == "experts.0" and finding.node.startswith("index")
        assert "at the positions topk (node topk) ranked" in finding.message
        assert "bind the router weight's rows to the experts' site" in finding.message
    numeric = numeric_check(spec, mixtral(), registries=REGISTRIES)
    assert {"experts.0", "experts.1"} <= set(numeric.failed_sites)


def test_gate_and_up_halves_on_different_per_expert_permutations_fail_at_their_product():
    text = spec_text().replace(GATE_UP, GATE_UP.replace("| mlp.${i}]", "| up.${i}]")).replace(
        MLP_SITE, 'up.${i}:      {group: permutation, size: f, per: "experts.${i}"}\n  ' + MLP_SITE)
    report = static_check(symdsl.load_spec_text(text), mixtral(), registries=REGISTRIES)
    assert [(f.op, f.site) for f in report.findings] == [("mul", "mlp.0")]
    assert "both sides must carry the same sites" in report.findings[0].message


def test_down_projection_reading_another_per_expert_site_fails_at_the_batched_matmul():
    text = spec_text().replace(DOWN, DOWN.replace("mlp.${i}'", "down.${i}'")).replace(
        MLP_SITE, 'down.${i}:    {group: permutation, size: f, per: "experts.${i}"}\n  ' + MLP_SITE)
    report = static_check(symdsl.load_spec_text(text), mixtral(), registries=REGISTRIES)
    assert [f.op for f in report.findings] == ["bmm"]
    assert "contracts" in report.findings[0].message and "down.0" in report.findings[0].message


def test_experts_that_copy_positions_are_refused_at_topk():
    # a semi-permutation (copies of experts) is elementwise like a permutation, so softmax accepts it,
    # but the ranking of the router's outputs changes when experts are duplicated
    spec = symdsl.load_spec_text(spec_text().replace("{group: permutation, size: E,", "{group: semi_permutation, size: E,")
                                 .replace(MLP_SITE, 'mlp.${i}:     {group: permutation, size: f,'))
    report = static_check(spec, mixtral(), registries=REGISTRIES)
    assert {f.op for f in report.findings} == {"topk"} and {f.site for f in report.findings} == {"experts.0"}
    assert "kept only by a permutation of the positions" in report.findings[0].message


def test_per_expert_units_move_with_their_expert():
    # y[e] = sigma_e . x[pi(e)]: the expert permutation first, then the unit permutation of the
    # expert now at position e (docs/spec-language.md 1.3)
    model = mixtral().double()
    resolved = resolve(symdsl.find_spec("hf-mixtral"), model, registries=REGISTRIES)
    state = model.state_dict()
    g = random_transform(resolved, ["experts.0", "mlp.0"], seed=5)
    moved = act_state_dict(resolved, state, g)
    pi, sigma = g["experts.0"], g["mlp.0"]
    up, down = state["model.layers.0.mlp.experts.gate_up_proj"], state["model.layers.0.mlp.experts.down_proj"]
    for e in range(4):
        rows = torch.cat([sigma[e], sigma[e] + 48])                     # gate half and up half alike
        assert torch.equal(moved["model.layers.0.mlp.experts.gate_up_proj"][e], up[pi[e]][rows])
        assert torch.equal(moved["model.layers.0.mlp.experts.down_proj"][e], down[pi[e]][:, sigma[e]])
        assert torch.equal(moved["model.layers.0.mlp.gate.weight"][e], state["model.layers.0.mlp.gate.weight"][pi[e]])
    assert torch.equal(moved["model.layers.1.mlp.experts.down_proj"], state["model.layers.1.mlp.experts.down_proj"])


@pytest.mark.parametrize("seed", [3, 4])
def test_weight_matching_recovers_a_hidden_expert_permutation_and_per_expert_units(seed):
    model = mixtral().double()
    resolved = resolve(symdsl.find_spec("hf-mixtral"), model, registries=REGISTRIES)
    canonicalize(model, resolved)
    a = {k: v.clone() for k, v in model.state_dict().items()}
    hidden = random_transform(resolved, seed=seed)
    while torch.equal(hidden["experts.0"], torch.arange(4)):          # make the expert permutation non-trivial
        seed += 100
        hidden["experts.0"] = random_transform(resolved, ["experts.0"], seed=seed)["experts.0"]
    b = act_state_dict(resolved, a, hidden)
    assert relative_distance(resolved, b, a) > 0.5
    result = REGISTRIES.matchers["weight"].match(resolved, a, b)
    assert relative_distance(resolved, act_state_dict(resolved, b, result.elements), a) < 1e-6
    kind = resolved.sites["experts.0"].kind
    for layer in ("0", "1"):                # the found experts and units are the hidden ones, inverted
        assert torch.equal(result.elements[f"experts.{layer}"], kind.inverse(hidden[f"experts.{layer}"]))
        pi = hidden[f"experts.{layer}"]
        for e in range(4):                  # B's expert e is A's expert pi[e], its units moved by sigma_e:
            back = result.elements[f"mlp.{layer}"][pi[e]]       # put back at pi[e], units by sigma_e^-1
            assert torch.equal(back, hidden[f"mlp.{layer}"][e].argsort())


def test_learned_matching_runs_and_ends_no_worse_than_its_weight_matching_start():
    from symdsl.api.pipeline import match, prepare
    from symdsl.data import load_dataset

    data = load_dataset("stdlib-text", max_chars=20_000, block_size=16)
    a, b = (mixtral(seed, vocab_size=data.vocab_size) for seed in (0, 1))
    result = match(prepare([a, b]), 1, "learned", data=data, steps=6, eval_every=3, batch_size=8,
                   validation_batches=2)
    assert {"experts.0", "mlp.0"} <= set(result.info["learned_sites"])
    assert result.info["start"]["matcher"] == "weight"
    assert result.info["best_validation"] <= result.info["start_validation"]


def test_symdsl_check_on_a_saved_folder_finds_the_spec_and_passes(tmp_path, capsys):
    from symdsl.cli.main import main

    mixtral().save_pretrained(tmp_path / "tiny")
    assert main(["check", "--model", str(tmp_path / "tiny")]) == 0
    out = capsys.readouterr().out
    assert "spec hf-mixtral" in out and "ok: every op respects the declared sites" in out
    assert f"'{EXACT_EXPERTS}' implementation" in out and "result: OK" in out


def test_exact_kernels_change_only_models_with_selectable_experts():
    import transformers

    model = mixtral()
    notes = use_exact_kernels(model)
    assert experts_implementation(model) == EXACT_EXPERTS and len(notes) == 1
    assert use_exact_kernels(model) == []                               # already exact
    with quiet_transformers():
        llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4, vocab_size=64))
    before = experts_implementation(llama)
    assert use_exact_kernels(llama) == [] and experts_implementation(llama) == before
    assert use_exact_kernels(torch.nn.Linear(2, 2)) == []
