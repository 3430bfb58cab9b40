"""The paper's circuit route: attention as QK/OV circuits, and specs with a `canonical` section."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import timm
import torch
import transformers

from conftest import canonical_example, relative_distance
from symdsl.act import act_state_dict, random_transform
from symdsl.canon import canonicalize
from symdsl.check import numeric_check
from symdsl.check.static import static_check
from symdsl.cli.main import main
from symdsl.errors import BindError, SpecError, UsageError
from symdsl.models import build_example
from symdsl.models.build import make_inputs, perturb_parameters, quiet_transformers
from symdsl.api.pipeline import prepare
from symdsl.spec import load_spec_text, model_config, resolve
from symdsl import find_spec
from symdsl_builtins.circuits import CircuitAttention, to_circuits
from conftest import REGISTRIES

F64 = torch.float64
CIRCUIT_SPECS = ["hf-gpt2-circuits", "timm-vit-circuits"]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _gpt2(impl: str = "sdpa") -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=16,
                                     bos_token_id=0, eos_token_id=0, attn_implementation=impl)
    with quiet_transformers():
        model = transformers.GPT2LMHeadModel(config)
    return perturb_parameters(model).to(F64).eval()


def _vit(**options) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.models.vision_transformer.VisionTransformer(
        img_size=8, patch_size=2, in_chans=1, num_classes=10, embed_dim=32, depth=2, num_heads=4, **options)
    return perturb_parameters(model).to(F64).eval()


def _rewrite(model: torch.nn.Module, blocks: str) -> torch.nn.Module:
    """A copy of ``model`` whose attention modules are circuits (the canonicalizer alone, no spec)."""
    out = copy.deepcopy(model)
    paths = [f"{blocks}.{i}.attn" for i in range(len(out.get_submodule(blocks)))]
    canon = REGISTRIES.canonicalizers.lookup("attention_to_circuits")
    canon.apply(out, canon.prepare({"modules": paths}, ""), None)
    return out


# --------------------------------------------------------------------------- the rewrite itself

@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_gpt2_circuits_compute_the_same_logits(impl):
    model = _gpt2(impl)
    circuits = _rewrite(model, "transformer.h")
    tokens = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(1))
    padding = torch.ones(2, 9, dtype=torch.long)
    padding[1, :3] = 0                                       # left padding: masked keys, masked query rows
    with torch.no_grad():
        torch.testing.assert_close(circuits(input_ids=tokens).logits, model(input_ids=tokens).logits,
                                   rtol=1e-12, atol=1e-12)
        ours = circuits(input_ids=tokens, attention_mask=padding).logits
        ref = model(input_ids=tokens, attention_mask=padding).logits
        assert torch.isfinite(ours).all()
        assert _rel(ours[0], ref[0]) < 1e-12 and _rel(ours[1, 3:], ref[1, 3:]) < 1e-12
        # the cache holds augmented tokens: the next tokens' logits match the uncached model's
        past = circuits(input_ids=tokens[:, :5], use_cache=True).past_key_values
        ours = circuits(input_ids=tokens[:, 5:], past_key_values=past).logits
        assert _rel(ours, model(input_ids=tokens).logits[:, 5:]) < 1e-12
    assert torch.equal(circuits.generate(tokens[:, :4], max_new_tokens=4, do_sample=False, pad_token_id=0),
                       model.generate(tokens[:, :4], max_new_tokens=4, do_sample=False, pad_token_id=0))


def test_gpt2_circuits_have_the_papers_shapes_and_rank():
    circuits = _rewrite(_gpt2(), "transformer.h")
    state = circuits.state_dict()
    assert not any("c_attn" in name or "attn.c_proj" in name for name in state)
    assert state["transformer.h.0.attn.w_qk"].shape == (4, 33, 33)
    assert state["transformer.h.0.attn.w_ov"].shape == (4, 32, 33)
    assert state["transformer.h.0.attn.b_o"].shape == (32,)
    ranks = torch.linalg.matrix_rank(state["transformer.h.1.attn.w_qk"])
    assert ranks.tolist() == [8, 8, 8, 8]                     # head_dim: a product of two (8, 33) factors


def test_circuits_are_invariant_to_the_per_head_maps():
    # the reason for the route: the standard spec's qk/ov maps change the factors, not the circuits
    spec, model, resolved = canonical_example("hf-gpt2")
    moved = copy.deepcopy(model)
    moved.load_state_dict(act_state_dict(resolved, model.state_dict(),
                                         random_transform(resolved, ["qk.0", "ov.0", "qk.1", "ov.1"], seed=4)))
    assert relative_distance(resolved, moved.state_dict(), model.state_dict()) > 0.3
    a, b = _rewrite(model, "transformer.h").state_dict(), _rewrite(moved, "transformer.h").state_dict()
    for name in ("w_qk", "w_ov", "b_o"):
        for layer in (0, 1):
            key = f"transformer.h.{layer}.attn.{name}"
            assert _rel(b[key], a[key]) < 1e-12, key


@pytest.mark.parametrize("options", [{}, {"qkv_bias": False}, {"proj_bias": False}])
def test_vit_circuits_compute_the_same_logits(options):
    model = _vit(**options)
    circuits = _rewrite(model, "blocks")
    assert isinstance(circuits.blocks[0].attn, CircuitAttention) and circuits.blocks[0].attn.num_heads == 4
    images = torch.randn(3, 1, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert _rel(circuits(images), model(images)) < 1e-12


def test_vit_circuit_module_follows_timm_masks():
    attention = _vit().blocks[0].attn
    circuit = to_circuits("blocks.0.attn", attention)
    tokens = torch.randn(2, 5, 32, dtype=F64, generator=torch.Generator().manual_seed(3))
    keep = torch.rand(2, 1, 5, 5, generator=torch.Generator().manual_seed(4)) > 0.4
    keep[..., 0] = True
    additive = torch.randn(2, 1, 5, 5, dtype=F64)
    with torch.no_grad():
        for kwargs in ({}, {"is_causal": True}, {"attn_mask": keep}, {"attn_mask": additive}):
            assert _rel(circuit(tokens, **kwargs), attention(tokens, **kwargs)) < 1e-12, kwargs


def test_the_rewrite_keeps_training_mode_and_is_idempotent():
    model = _gpt2()
    model.train()
    circuits = _rewrite(model, "transformer.h")
    assert circuits.transformer.h[0].attn.training and circuits.transformer.h[0].attn.attn_drop.p == 0.1
    again = _rewrite(circuits, "transformer.h")
    assert torch.equal(again.state_dict()["transformer.h.0.attn.w_qk"], circuits.state_dict()["transformer.h.0.attn.w_qk"])


def test_the_rewrite_refuses_what_has_no_circuit_form():
    with pytest.raises(BindError, match="'blocks.0.attn' has a q_norm layer"):
        _rewrite(_vit(qk_norm=True), "blocks")
    with pytest.raises(BindError, match="'blocks.0.mlp' is a timm.layers.mlp.Mlp"):
        to_circuits("blocks.0.mlp", _vit().blocks[0].mlp)
    assert REGISTRIES.canonicalizers.lookup("attention_to_circuits").changes_architecture


# --------------------------------------------------------------------------- the circuit specs

@pytest.mark.parametrize("name", CIRCUIT_SPECS)
def test_every_site_of_the_circuit_specs_holds(name):
    spec = find_spec(name)
    report = numeric_check(spec, registries=REGISTRIES)
    assert report.canonicalize_error < 1e-12
    assert [s.site for s in report.sites] == ["resid", "heads.0", "heads.1", "mlp.0", "mlp.1", "*"]
    assert report.ok and max(s.relative_error for s in report.sites) < 1e-12, report.failed


@pytest.mark.parametrize("name", CIRCUIT_SPECS)
def test_the_spec_binds_the_canonical_form_and_covers_it(name):
    spec = find_spec(name)
    model = build_example(spec)
    resolved = resolve(spec, model, registries=REGISTRIES)
    attn = "transformer.h.0.attn" if name.startswith("hf") else "blocks.0.attn"
    qkv = f"{attn}.c_attn.weight" if name.startswith("hf") else f"{attn}.qkv.weight"
    # the steps read the original form; the sites act on the canonical one
    assert qkv in resolved.original.tensors and qkv not in resolved.tensors
    assert resolved.tensors[f"{attn}.w_qk"].pattern == "heads.0 [resid' | 1] [resid' | 1]"
    assert resolved.sites["resid"].options == {} and not {"qk.0", "ov.0"} & set(resolved.sites)
    canonicalize(model, resolved)
    assert set(model.state_dict()) == set(resolved.tensors) | resolved.invariant
    # a model already in canonical form binds to the same tensors and is not canonicalized again
    again = resolve(spec, model, registries=REGISTRIES)
    assert again.original is None and again.tensors.keys() == resolved.tensors.keys()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    canonicalize(model, again)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_prepare_aligns_circuit_models_by_weight_matching():
    spec = find_spec("timm-vit-circuits")
    models = [build_example(spec, seed=s) for s in (0, 1)]
    prepared = prepare(models, spec)
    assert prepared.resolved.original is None and "blocks.1.attn.w_ov" in prepared.states[1]
    result = REGISTRIES.matchers.lookup("weight").match(prepared.resolved, prepared.states[0], prepared.states[1])
    aligned = act_state_dict(prepared.resolved, prepared.states[1], result.elements)
    assert relative_distance(prepared.resolved, aligned, prepared.states[0]) < \
        relative_distance(prepared.resolved, prepared.states[1], prepared.states[0])


@pytest.mark.parametrize("name", CIRCUIT_SPECS)
def test_weight_matching_recovers_a_hidden_transform_in_circuit_space(name):
    spec, model, resolved = canonical_example(name)
    a = {k: v.clone() for k, v in model.state_dict().items()}
    hidden = random_transform(resolved, seed=11)
    b = act_state_dict(resolved, a, hidden)
    assert relative_distance(resolved, b, a) > 0.3
    result = REGISTRIES.matchers.lookup("weight").match(resolved, a, b)
    aligned = act_state_dict(resolved, b, result.elements)
    assert relative_distance(resolved, aligned, a) < 1e-9
    for site, g in result.elements.items():
        kind = resolved.sites[site].kind
        if kind.name == "permutation":
            assert torch.equal(g, kind.inverse(hidden[site])), site
        else:
            torch.testing.assert_close(g, hidden[site].mT, rtol=0, atol=1e-8)
    inputs = make_inputs(spec, {**model_config(model), **resolved.dims})
    with torch.no_grad():
        ref = model(**inputs)
        model.load_state_dict(aligned)
        out = model(**inputs)
    ref, out = (getattr(x, "logits", x) for x in (ref, out))
    assert _rel(out, ref) < 1e-9


def _edited(name: str, old: str, new: str):
    text = Path(find_spec(name).file).read_text()
    assert old in text, old
    return load_spec_text(text.replace(old, new, 1), f"{name}-edited.yaml")


def test_an_unbound_key_side_fails_both_checks():
    # the key side of the QK circuit left unbound: the rotation no longer cancels in the scores
    spec = _edited("timm-vit-circuits", "w_qk: \"heads.${i} [resid' | 1] [resid' | 1]\"",
                   "w_qk: \"heads.${i} [resid' | 1] [_ | 1]\"")
    assert {"resid", "*"} <= {s.site for s in numeric_check(spec, registries=REGISTRIES).failed}
    findings = static_check(spec, backend="export", registries=REGISTRIES).findings
    assert findings and findings[0].op == "matmul" and "contracts _32 with resid" in findings[0].message


def test_heads_permuted_on_one_circuit_only_fail_both_checks():
    # heads permuted on the QK circuits only: the OV circuits of the heads no longer line up
    spec = _edited("hf-gpt2-circuits", "w_ov: \"heads.${i} resid", "w_ov: \"_ resid")
    assert "heads.0" in {s.site for s in numeric_check(spec, registries=REGISTRIES).failed}
    assert static_check(spec, backend="export", registries=REGISTRIES).findings


def test_canonical_form_errors_name_the_canonical_section():
    spec = _edited("timm-vit-circuits", "    blocks.${i}.attn.b_o: resid\n", "")
    with pytest.raises(SpecError) as caught:
        resolve(spec, build_example(spec), registries=REGISTRIES)
    problem = caught.value.problems[0]
    assert "'blocks.0.attn.b_o' (32,) of the canonical form" in problem.message
    assert problem.path == ("canonical", "tensors") and "canonical: tensors" in problem.hint
    spec = _edited("timm-vit-circuits", "blocks.${i}.attn.w_ov:", "blocks.${i}.attn.w_vo:")
    with pytest.raises(SpecError, match="tensor 'blocks.0.attn.w_vo' is not in the model; did you mean"):
        resolve(spec, build_example(spec), registries=REGISTRIES)
    spec = find_spec("timm-vit-circuits")
    with pytest.raises(UsageError, match="needs the model itself"):
        resolve(spec, state=build_example(spec).state_dict(), config={}, registries=REGISTRIES)


def test_a_spec_without_canonical_section_resolves_as_before():
    resolved = resolve(find_spec("timm-vit"), build_example(find_spec("timm-vit")), registries=REGISTRIES)
    assert type(resolved).__name__ == "ResolvedSpec" and "blocks.0.attn.qkv.weight" in resolved.tensors


def test_symdsl_check_passes_on_both_circuit_specs(capsys):
    assert main(["check", *CIRCUIT_SPECS]) == 0
    out = capsys.readouterr().out
    assert out.count("result: OK") == 2 and "every op respects the declared sites" in out


def test_align_refuses_to_write_circuit_models(tmp_path, capsys):
    from symdsl.models import save_model

    spec = find_spec("timm-vit")
    for seed in (0, 1):
        model = build_example(spec, seed=seed)
        model.symdsl_config = dict(spec.document.example.config)
        save_model(model, tmp_path / f"m{seed}")
    code = main(["align", str(tmp_path / "m0"), str(tmp_path / "m1"), "--spec", "timm-vit-circuits",
                 "-o", str(tmp_path / "out")])
    assert code == 2 and "(attention_to_circuits, layernorm_to_rmsnorm)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
