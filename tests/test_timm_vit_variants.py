"""timm ViTs of real shapes: example inputs that follow the model (channels, image size), the
--inputs override, and matching that claims only the ViTs a spec binds (class token vs average
pooling, register tokens refused with a pointer to `symdsl infer`; SwiGLU/RMSNorm ViTs such as
aimv2: test_timm_vit_swiglu.py)."""
from __future__ import annotations

import json

import pytest
import torch

import symdsl
from conftest import REGISTRIES
from decoder_families import hidden_element_distances
from symdsl.cli.main import main
from symdsl.errors import UsageError
from symdsl.models.build import make_inputs, perturb_parameters
from symdsl.spec import model_config, resolve
from symdsl.spec.inputs import parse_input_shapes, with_input_shapes
from symdsl.spec.registry import match_spec

timm = pytest.importorskip("timm")

TINY = dict(img_size=32, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0)


def vit(name: str = "deit_tiny_patch16_224", seed: int = 0, **overrides) -> torch.nn.Module:
    """A timm model of ``name``'s architecture, 3 channels and 32x32 images, shrunk to 2 blocks."""
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **{**TINY, **overrides})
    return perturb_parameters(model, seed=seed).eval()


def test_example_inputs_follow_the_model_s_channels_and_image_size():
    model = vit()                                                  # 3 channels, 32x32, patch 16
    spec = symdsl.find_spec("timm-vit")
    resolved = resolve(spec, model, registries=REGISTRIES)
    inputs = make_inputs(spec, {**model_config(model), **resolved.dims})
    assert tuple(inputs["x"].shape) == (2, 3, 32, 32)
    report = symdsl.check("timm-vit", model)
    assert report.ok, (report.static.findings, report.numeric.failed)
    assert max(s.relative_error for s in report.numeric.sites) < 1e-9


def test_a_non_square_image_reads_both_sizes():
    model = vit(img_size=(32, 48))
    resolved = resolve(symdsl.find_spec("timm-vit"), model, registries=REGISTRIES)
    assert (resolved.dims["C"], resolved.dims["H"], resolved.dims["W"]) == (3, 32, 48)
    assert symdsl.check("timm-vit", model, static=False).ok


def test_inputs_override_sets_the_shape_and_keeps_the_kind():
    spec = with_input_shapes(symdsl.find_spec("hf-bert"), parse_input_shapes(["input_ids=1x5,token_type_ids=1x5"]))
    ids = make_inputs(spec, {"vocab_size": 64, "type_vocab_size": 2})
    assert tuple(ids["input_ids"].shape) == (1, 5) and ids["input_ids"].dtype == torch.int64
    assert int(ids["input_ids"].max()) < 64 and int(ids["token_type_ids"].max()) < 2
    report = symdsl.check("timm-vit", vit(), inputs={"x": (1, 3, 32, 32)}, static=False)
    assert report.ok


def test_inputs_override_errors_name_the_input_and_the_fix(capsys):
    with pytest.raises(UsageError, match=r"--inputs 'x=1 by 3': expected NAME=SHAPE, e.g. pixel_values=1x3x32x32"):
        parse_input_shapes(["x=1 by 3"])
    with pytest.raises(UsageError, match="a size is 0"):
        parse_input_shapes(["x=1x0"])
    assert main(["check", "timm-vit", "--inputs", "pixel_values=1x1x8x8"]) == 2
    assert "spec 'timm-vit' has no example input 'pixel_values'" in capsys.readouterr().err
    assert main(["check", "timm-vit", "--inputs", "x=1x8x8"]) == 2
    err = capsys.readouterr().err
    assert "3 sizes given" in err and "timm-vit.yaml:" in err and "example.inputs.x has 4 axes" in err
    # a shape the model rejects: the numeric check says which inputs, and where to change them
    assert main(["check", "timm-vit", "--numeric-only", "--inputs", "x=1x1x9x9"]) == 1
    err = capsys.readouterr().err
    assert "Input height (9) doesn't match model (8)" in err and "--inputs" in err


def test_the_cli_override_is_used(capsys):
    assert main(["check", "timm-vit", "--json", "--inputs", "x=3x1x8x8"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True


def test_attr_with_an_index_reads_a_tuple_attribute_and_errors_are_named():
    from symdsl.spec.config import expression_functions
    from symdsl.spec.expr import ExprError

    model = vit()
    attr = expression_functions(model, model.state_dict(), [""])["attr"]
    assert attr("patch_embed.img_size", 1) == 32
    with pytest.raises(ExprError, match=r"attr\('patch_embed.img_size'\) is tuple \(32, 32\).*attr\('patch_embed.img_size', 0\)"):
        attr("patch_embed.img_size")
    with pytest.raises(ExprError, match="has 2 entries"):
        attr("patch_embed.img_size", 2)
    with pytest.raises(ExprError, match="not a tuple or list; leave out the index"):
        attr("blocks.0.attn.num_heads", 0)


# -- which spec claims which ViT -------------------------------------------------------------------
@pytest.mark.parametrize("name, overrides, spec_name", [
    ("deit_tiny_patch16_224", {}, "timm-vit"),
    ("vit_base_patch16_gap_224", {}, "timm-vit-gap"),                             # final norm on every token
    ("vit_base_patch16_gap_224", {"fc_norm": True}, "timm-vit-gap"),              # final norm on the average
    ("deit_tiny_patch16_224", {"class_token": False, "global_pool": "avg"}, "timm-vit-gap"),
])
def test_each_vit_gets_the_spec_that_binds_it_and_both_checks_pass(name, overrides, spec_name):
    model = vit(name, **overrides)
    assert match_spec(model, REGISTRIES).name == spec_name
    report = symdsl.check(model=model)
    assert report.ok, (report.static.findings, report.numeric.failed)
    assert max(s.relative_error for s in report.numeric.sites) < 1e-9


@pytest.mark.parametrize("name, overrides, why", [
    ("vit_base_patch16_reg4_gap_256", {}, "'reg_token'"),                        # register tokens
])
def test_a_vit_no_spec_binds_is_refused_with_the_reason_and_infer(name, overrides, why):
    with pytest.raises(UsageError) as info:
        symdsl.check(model=vit(name, **overrides))
    message = str(info.value)
    assert "timm-vit, timm-vit-gap and timm-vit-swiglu match its class but cannot bind this architecture" in message
    assert why in message and "symdsl infer --model MODEL" in message


def test_a_gap_vit_is_not_claimed_by_the_class_token_spec():
    model = vit("vit_base_patch16_gap_224")
    with pytest.raises(symdsl.SymdslError, match="no tensor 'cls_token'"):
        resolve(symdsl.find_spec("timm-vit"), model, registries=REGISTRIES)


@pytest.mark.parametrize("overrides", [{}, {"fc_norm": True}])
def test_weight_matching_recovers_a_hidden_element_of_a_gap_vit(overrides):
    model = vit("vit_base_patch16_gap_224", **overrides)
    spec = symdsl.find_spec("timm-vit-gap")
    assert resolve(spec, model, registries=REGISTRIES).heads == (["fc_norm"] if overrides else ["norm"])
    before, after = hidden_element_distances(spec, model)
    assert before > 0.5 and after < 1e-6, (before, after)


def test_a_gap_spec_without_the_final_fold_fails_both_checks_at_the_norm():
    from pathlib import Path

    text = Path(symdsl.find_spec("timm-vit-gap").file).read_text()
    wrong = text.replace("    canonicalize:\n      - fold_layernorm: {norm: norm, readers: [head.weight]}\n", "")
    assert wrong != text
    report = symdsl.check(symdsl.load_spec_text(wrong), vit("vit_base_patch16_gap_224"))
    assert not report.static.ok
    assert [(f.op, f.module) for f in report.static.findings] == [("layer_norm", "norm")]
    assert "whose gain is not constant" in report.static.findings[0].message
    assert not report.numeric.ok and "resid" in report.numeric.failed_sites
