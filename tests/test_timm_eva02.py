"""timm's EVA02 (``Eva`` built as ``eva02_*``: 2-D RoPE on the patch tokens from a precomputed
table, fused qkv with q/v bias parameters and a zero k-bias buffer, SwiGLU MLP, class token,
average pooling): the shipped spec timm-eva02 is matched automatically, both checks pass in
float64, weight matching recovers a hidden element, the command line checks it, and Eva models it
does not describe are refused with the tensor that shows why."""
from __future__ import annotations

import pytest
import torch

import symdsl
from conftest import REGISTRIES
from decoder_families import edited_spec, hidden_element_distances
from symdsl.cli.main import main
from symdsl.errors import UsageError
from symdsl.spec import resolve
from symdsl.spec.registry import match_spec

timm = pytest.importorskip("timm")
from vit_families import tiny_eva02  # noqa: E402  (needs timm)


@pytest.mark.parametrize("overrides, head", [({}, "features"), ({"num_classes": 10}, "classifier")])
def test_eva02_is_matched_and_both_checks_pass_in_float64(overrides, head):
    model = tiny_eva02(**overrides)
    spec = match_spec(model, REGISTRIES)
    assert spec.name == "timm-eva02"
    assert resolve(spec, model, registries=REGISTRIES).heads == [head]
    report = symdsl.check(model=model)
    assert report.static.ok, report.static.findings
    assert report.numeric.ok, report.numeric.failed
    assert {s.site for s in report.numeric.sites} >= {"resid", "heads.0", "qk.0", "qk.1", "ov.1", "mlp.0"}
    assert max(s.relative_error for s in report.numeric.sites) < 1e-9


@pytest.mark.parametrize("overrides", [{}, {"num_classes": 10}])
def test_weight_matching_recovers_a_hidden_element(overrides):
    before, after = hidden_element_distances(symdsl.find_spec("timm-eva02"), tiny_eva02(**overrides))
    assert before > 0.5 and after < 1e-6, (before, after)


def test_the_command_line_checks_the_spec_s_example_and_a_given_model(capsys):
    assert main(["check", "timm-eva02"]) == 0
    assert main(["check", "--model", "vit_families:tiny_eva02", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"ok": true' in out and "timm-eva02" in out


def test_queries_and_keys_admit_only_the_per_pair_rotations_of_the_rope():
    # an invertible map of each head's q/k basis does not commute with the position's rotation
    wrong = edited_spec("timm-eva02", ("group: rotary, size: k, per: \"heads.${i}\", pairs: interleaved",
                                       "group: invertible, size: k, per: \"heads.${i}\""))
    report = symdsl.check(wrong, tiny_eva02())
    assert not report.static.ok and {"qk.0", "qk.1"} <= set(report.numeric.failed_sites)
    found = report.static.findings[0]
    assert found.op in ("mul", "reshape") and found.module == "blocks.0.attn" and found.node
    assert "declare the site 'group: rotary' with 'pairs: interleaved'" in found.message
    # the half layout pairs other coordinates
    half = edited_spec("timm-eva02", ("pairs: interleaved", "pairs: half"))
    assert any("set 'pairs: interleaved'" in f.message for f in symdsl.check(half, tiny_eva02(), numeric=False).static.findings)


def test_a_k_bias_buffer_that_is_not_zero_fails_both_checks_at_the_fused_bias():
    model = tiny_eva02()
    with torch.no_grad():
        model.blocks[0].attn.k_bias.fill_(0.5)          # the keys get a fixed offset no site moves
    report = symdsl.check("timm-eva02", model)
    assert not report.numeric.ok and "qk.0" in report.numeric.failed_sites
    found = [f for f in report.static.findings if f.module == "blocks.0.attn"]
    assert found and found[0].op == "linear" and found[0].node == "linear"
    assert "linear bias" in found[0].message and "heads.0 qk.0'" in found[0].message


@pytest.mark.parametrize("overrides, why", [
    ({"scale_mlp": True}, "blocks.0.mlp.fc1.weight"),          # sub-LN MLP (eva02_base/large): fc1_g/fc1_x + norm
    ({"scale_attn_inner": True}, "blocks.0.attn.norm.weight"),  # sub-LN in attention
    ({"qkv_fused": False}, "blocks.0.attn.qkv.weight"),        # separate q/k/v projections
    ({"init_values": 0.1}, "blocks.0.gamma_1"),                # LayerScale
    ({"num_reg_tokens": 2}, "reg_token"),                      # register tokens
    ({"qk_norm": True}, "blocks.0.attn.q_norm.weight"),
    ({"global_pool": "token"}, "norm.weight"),                 # class-token pooling: the final norm on every token
])
def test_eva_models_the_spec_does_not_describe_are_refused_with_the_tensor_and_infer(overrides, why):
    with pytest.raises(UsageError) as info:
        match_spec(tiny_eva02(**overrides), REGISTRIES)
    message = str(info.value)
    assert "timm-eva02 matches its class but cannot bind this architecture" in message
    assert why in message and "symdsl infer --model MODEL" in message
