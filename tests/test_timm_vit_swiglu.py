"""timm ViTs with a SwiGLU MLP and RMSNorm (aimv2, or a VisionTransformer built that way): the
shipped spec timm-vit-swiglu is matched automatically, both checks pass in float64, weight
matching recovers a hidden element, and the command line checks a small one."""
from __future__ import annotations

import pytest

import symdsl
from conftest import REGISTRIES
from decoder_families import edited_spec, hidden_element_distances
from symdsl.cli.main import main
from symdsl.spec import resolve
from symdsl.spec.registry import match_spec

timm = pytest.importorskip("timm")
from vit_families import tiny_aimv2, tiny_timm  # noqa: E402  (needs timm)


def swiglu_vit(**overrides):
    """A plain VisionTransformer built with aimv2's layers by keyword (not an aimv2_* name)."""
    from functools import partial

    from timm.layers import RmsNorm, SwiGLU
    from timm.models.vision_transformer import VisionTransformer

    kwargs = dict(patch_size=14, class_token=False, global_pool="avg", fc_norm=False, qkv_bias=False,
                  proj_bias=False, norm_layer=partial(RmsNorm, eps=1e-5), embed_norm_layer=partial(RmsNorm, eps=1e-5),
                  mlp_layer=SwiGLU, act_layer="silu", num_classes=10)
    model = VisionTransformer(**{**kwargs, **dict(img_size=28, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0),
                                 **overrides})
    from symdsl.models.build import perturb_parameters
    return perturb_parameters(model, seed=1).eval()


@pytest.mark.parametrize("build, head", [
    (lambda: tiny_aimv2(), "features"),                      # num_classes=0: the averaged features come out
    (lambda: tiny_aimv2(num_classes=10), "classifier"),
    (swiglu_vit, "classifier"),
])
def test_the_swiglu_vit_is_matched_and_both_checks_pass_in_float64(build, head):
    model = build()
    spec = match_spec(model, REGISTRIES)
    assert spec.name == "timm-vit-swiglu"
    assert resolve(spec, model, registries=REGISTRIES).heads == [head]
    report = symdsl.check(model=model)
    assert report.ok, (report.static.findings, report.numeric.failed)
    assert {s.site for s in report.numeric.sites} >= {"resid", "heads.0", "qk.1", "ov.0", "mlp.1"}
    assert max(s.relative_error for s in report.numeric.sites) < 1e-9


@pytest.mark.parametrize("overrides", [{}, {"num_classes": 10}])
def test_weight_matching_recovers_a_hidden_element(overrides):
    before, after = hidden_element_distances(symdsl.find_spec("timm-vit-swiglu"), tiny_aimv2(**overrides))
    assert before > 0.5 and after < 1e-6, (before, after)


def test_a_rotation_of_the_residual_stream_is_refused_at_the_patch_norm():
    # the patch embedding's RMSNorm gain is applied to the stream itself: only permutations move it
    wrong = edited_spec("timm-vit-swiglu", ("resid:      {group: permutation", "resid:      {group: orthogonal"))
    report = symdsl.check(wrong, tiny_aimv2())
    assert not report.static.ok and not report.numeric.ok
    assert "resid" in report.numeric.failed_sites
    assert any(f.site == "resid" for f in report.static.findings)


def test_a_swiglu_vit_with_biases_or_layernorm_is_not_claimed():
    # qkv biases are not declared: the spec does not bind, so no spec claims it (refused, with infer)
    with pytest.raises(symdsl.SymdslError, match="blocks.0.attn.qkv.bias"):
        match_spec(swiglu_vit(qkv_bias=True), REGISTRIES)
    assert match_spec(tiny_timm("vit_base_patch16_gap_224", num_classes=10, patch_size=14), REGISTRIES).name \
        == "timm-vit-gap"


def test_the_command_line_checks_a_small_aimv2(capsys):
    assert main(["check", "--model", "vit_families:tiny_aimv2", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"ok": true' in out and "timm-vit-swiglu" in out
