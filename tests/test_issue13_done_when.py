"""Issue 13's "done when", the cells no family test file covered (the whole matrix, with the test
of every cell: docs/checking.md, "Encoders, vision and encoder-decoders: where each check is").

- timm ViTs as people configure them: DeiT-tiny's own widths (192 wide, 3 heads, 3 channels) at
  32x32 passes `symdsl check timm-vit --model`; a ViT built with ``class_token=False`` and average
  pooling is matched by timm-vit-gap and passes; weight matching recovers a hidden element of both;
  `symdsl infer` drafts their shipped specs' sites (tensor for tensor) and keeps timm's constructor
  arguments in the draft's example.
- Zero barrier: for one model of every family, B = A moved by a random element of every site;
  after weight matching the midpoint of A and aligned B computes A's outputs (the vanilla midpoint
  does not).
- The tensor-level site comparison the infer tests use (tests/site_compare.py) tells sites apart.

(A full-size `symdsl check timm-vit --model timm:vit_small_patch16_224` takes minutes in float64:
recorded in benchmarks/RESULTS.md, not run here.)
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

import symdsl
from conftest import REGISTRIES, build_hf, relative_distance
from site_compare import assert_same_sites, site_differences
from symdsl.act import act_state_dict, random_transform
from symdsl.canon import canonicalize
from symdsl.cli.main import main
from symdsl.infer import check_draft
from symdsl.models.build import make_inputs
from symdsl.spec import model_config, resolve

timm = pytest.importorskip("timm")
from vit_families import deit_tiny_32, tiny_aimv2, tiny_eva02, tiny_timm, tiny_vit_no_class_token  # noqa: E402

VIT32 = dict(img_size=32, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0)   # 3 channels, patch 16


def _check_json(args: list[str], capsys) -> dict:
    assert main(["check", *args, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def _worst(report: dict) -> float:
    return max(site["relative_error"] for site in report["numeric"]["sites"])


# -- timm ViTs at their real shapes -----------------------------------------------------------------
def test_a_deit_tiny_shaped_model_on_3x32x32_images_passes_symdsl_check(capsys):
    report = _check_json(["timm-vit", "--model", "vit_families:deit_tiny_32"], capsys)
    assert report["spec"] == "timm-vit" and report["static"]["ok"] and report["numeric"]["ok"]
    assert report["numeric"]["precision"] == "float64" and _worst(report) < 1e-9
    assert {"resid", "heads.0", "qk.1", "ov.1", "mlp.1"} <= {s["site"] for s in report["numeric"]["sites"]}


def test_a_vit_without_class_token_is_matched_by_its_own_spec_and_passes(capsys):
    report = _check_json(["--model", "vit_families:tiny_vit_no_class_token"], capsys)
    assert report["spec"] == "timm-vit-gap" and report["ok"] and _worst(report) < 1e-9
    # naming the class-token spec for it anyway: refused with the missing tensor, not a crash
    assert main(["check", "timm-vit", "--model", "vit_families:tiny_vit_no_class_token"]) == 1
    printed = capsys.readouterr()
    assert "dims.d: no tensor 'cls_token' in the model" in printed.err and "result: FAILED" in printed.out
    # ... and pointed to the spec that binds it
    assert "fix: the installed spec 'timm-vit-gap'" in printed.err and "symdsl check timm-vit-gap" in printed.err


# -- weight matching: the hidden element comes back, and the barrier is zero --------------------------
def _outputs(spec, model, state) -> torch.Tensor:
    resolved = resolve(spec, model, registries=REGISTRIES)
    inputs = make_inputs(spec, {**model_config(model), **resolved.dims}, dtype=torch.float64)
    moved = copy.deepcopy(model)
    moved.load_state_dict(state)
    with torch.no_grad():
        out = moved(**inputs)
    if isinstance(out, torch.Tensor):
        return out
    return out["logits_per_image"] if "logits_per_image" in out else out[0]


def _midpoint(x: dict, y: dict) -> dict:
    return {k: (x[k] + y[k]) / 2 if x[k].is_floating_point() else x[k] for k in x}


def _t5():
    from test_t5 import t5
    return t5()


def _clip():
    from test_clip import MODELS
    return MODELS["hf-clip"]()


# (spec, model, precision of the model's own arithmetic: T5's norm computes in float32)
ONE_PER_FAMILY = {
    "BertForSequenceClassification": ("hf-bert", lambda: build_hf("hf-bert", "BertForSequenceClassification"), 1e-9),
    "RobertaForMaskedLM": ("hf-roberta", lambda: build_hf("hf-roberta", "RobertaForMaskedLM"), 1e-9),
    "DistilBertForSequenceClassification": (
        "hf-distilbert", lambda: build_hf("hf-distilbert", "DistilBertForSequenceClassification"), 1e-9),
    "ViTForImageClassification": ("hf-vit", lambda: build_hf("hf-vit", "ViTForImageClassification"), 1e-9),
    "CLIPModel": ("hf-clip", _clip, 1e-9),
    "T5ForConditionalGeneration": ("hf-t5", _t5, 1e-5),
    "deit_tiny_32": ("timm-vit", deit_tiny_32, 1e-9),
    "vit_no_class_token": ("timm-vit-gap", tiny_vit_no_class_token, 1e-9),
    "aimv2": ("timm-vit-swiglu", lambda: tiny_aimv2(num_classes=10), 1e-9),
    "eva02": ("timm-eva02", lambda: tiny_eva02(num_classes=10), 1e-9),
}


@pytest.mark.parametrize("label", sorted(ONE_PER_FAMILY))
def test_weight_matching_recovers_a_hidden_element_with_zero_barrier(label):
    spec_name, build, precision = ONE_PER_FAMILY[label]
    spec, model = symdsl.find_spec(spec_name), build().double()
    resolved = resolve(spec, model, registries=REGISTRIES)
    canonicalize(model, resolved)
    a = {k: v.clone() for k, v in model.state_dict().items()}
    b = act_state_dict(resolved, a, random_transform(resolved, seed=5))
    result = REGISTRIES.matchers["weight"].match(resolved, a, b)
    aligned = act_state_dict(resolved, b, result.elements)
    assert relative_distance(resolved, b, a) > 0.5 and relative_distance(resolved, aligned, a) < 1e-6
    ref = _outputs(spec, model, a)
    scale = float(ref.abs().max())
    assert float((_outputs(spec, model, b) - ref).abs().max()) < precision * scale * 10     # B: A's function
    midway = float((_outputs(spec, model, _midpoint(a, aligned)) - ref).abs().max()) / scale
    vanilla = float((_outputs(spec, model, _midpoint(a, b)) - ref).abs().max()) / scale
    assert midway < max(1e-6, precision * 10) and vanilla > 1e-2, (midway, vanilla)


# -- infer on timm ViTs: the shipped sites, and the constructor arguments kept -----------------------
@pytest.mark.parametrize("factory, spec_name", [("deit_tiny_32", "timm-vit"),
                                                ("tiny_vit_no_class_token", "timm-vit-gap")])
def test_infer_on_a_timm_factory_drafts_the_shipped_sites_and_its_check_passes(factory, spec_name, tmp_path):
    import vit_families

    out = tmp_path / "draft.yaml"
    assert main(["infer", "--model", f"vit_families:{factory}", "-o", str(out), "-q"]) == 0    # its own check passed
    text = out.read_text()
    assert symdsl.load_spec_text(text, trust_code=True).document.example.factory == f"vit_families:{factory}"
    model = getattr(vit_families, factory)()
    drafted = resolve(symdsl.load_spec_text(text, trust_code=True), model, registries=REGISTRIES)
    assert_same_sites(drafted, resolve(symdsl.find_spec(spec_name), model, registries=REGISTRIES), model)


@pytest.mark.parametrize("overrides", [{}, {"fc_norm": True}], ids=["norm", "fc_norm"])
def test_infer_keeps_timm_s_constructor_arguments_and_drafts_timm_vit_gap(overrides):
    config = {**VIT32, "num_classes": 10, **overrides}
    model = tiny_timm("vit_base_patch16_gap_224", **config)
    draft = symdsl.infer(model, timm_name="vit_base_patch16_gap_224", config=config, registries=REGISTRIES)
    assert draft.example["timm"] == "vit_base_patch16_gap_224" and draft.example["config"] == config
    drafted = resolve(symdsl.load_spec_text(draft.text, trust_code=True), model, registries=REGISTRIES)
    assert_same_sites(drafted, resolve(symdsl.find_spec("timm-vit-gap"), model, registries=REGISTRIES), model)
    report = check_draft(draft.text, registries=REGISTRIES)         # rebuilt from the example alone
    assert report.ok, report


def test_the_infer_command_on_timm_name_writes_the_config_into_the_draft(tmp_path):
    out = tmp_path / "draft.yaml"
    config = {**VIT32, "class_token": False, "global_pool": "avg"}
    assert main(["infer", "--model", "timm:deit_tiny_patch16_224", "--config", json.dumps(config), "-o", str(out),
                 "-q"]) == 0
    example = symdsl.load_spec_text(out.read_text(), trust_code=True).document.example
    assert example.timm == "deit_tiny_patch16_224" and example.config == config
    assert main(["check", str(out), "--numeric-only"]) == 0           # rebuilt at 32x32, 3 channels, no class token


# -- the comparison itself ----------------------------------------------------------------------------
def _edited(spec_name: str, old: str, new: str):
    text = Path(symdsl.find_spec(spec_name).file).read_text()
    assert old in text, old
    return symdsl.load_spec_text(text.replace(old, new), file=f"{spec_name}-edited.yaml")


def test_the_site_comparison_finds_renamed_sites_equal_and_a_changed_tensor_or_kind_different():
    model = build_hf("hf-roberta", "RobertaForSequenceClassification")
    shipped = resolve(symdsl.find_spec("hf-roberta"), model, registries=REGISTRIES)
    renamed = resolve(_edited("hf-roberta", "mlp.${i}", "units.${i}"), model, registries=REGISTRIES)
    assert assert_same_sites(renamed, shipped, model)["units.1"] == "mlp.1"
    primal = resolve(_edited("hf-roberta", 'classifier.out_proj.weight: "_ cls\'"', 'classifier.out_proj.weight: "_ cls"'),
                     model, registries=REGISTRIES)
    assert any("tensor classifier.out_proj.weight axis 1" in p for p in site_differences(primal, shipped, model)[1])
    rotated = resolve(_edited("hf-roberta", "mlp.${i}:   {group: permutation", "mlp.${i}:   {group: orthogonal"),
                      model, registries=REGISTRIES)
    assert any(p.startswith("site mlp.0 (shipped mlp.0)") for p in site_differences(rotated, shipped, model)[1])
    with pytest.raises(AssertionError, match="site mlp.1"):
        assert_same_sites(rotated, shipped, model)
    # a returned feature the draft would not declare equivariant is a difference too
    bert = build_hf("hf-bert", "BertModel")
    silent = resolve(_edited("hf-bert", '    outputs:\n      pooler_output: "_ pool"\n', ""), bert, registries=REGISTRIES)
    problems = site_differences(silent, resolve(symdsl.find_spec("hf-bert"), bert, registries=REGISTRIES), bert)[1]
    assert problems == ["outputs differ: only in the draft [], only in the shipped spec ['pooler_output']"]
