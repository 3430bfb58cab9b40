"""Encoders: BERT (and its token-classification head), RoBERTa, DistilBERT (post-LayerNorm: only a
permutation of the residual stream), Hugging Face ViT (pre-LayerNorm: a rotation when a classifier
takes the final norm's gain; a permutation for the bare ViTModel, whose output carries it). Both
checks in float64, and weight matching recovers a hidden random element."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import symdsl
from conftest import REGISTRIES, build_hf
from decoder_families import hidden_element_distances
from symdsl.check.numeric import numeric_check
from symdsl.check.static import static_check
from symdsl.models.build import make_inputs
from symdsl.spec import model_config, resolve
from symdsl.spec.registry import match_spec

# (spec, class, config overrides, the heads the spec finds)
FAMILIES = [
    ("hf-bert", "BertModel", {}, ["pooler"]),
    ("hf-bert", "BertForTokenClassification", {}, ["token_classifier"]),
    ("hf-bert", "BertForSequenceClassification", {}, ["pooler", "classifier"]),
    ("hf-bert", "BertForMaskedLM", {}, ["mlm"]),
    ("hf-roberta", "RobertaModel", {}, ["pooler"]),
    ("hf-roberta", "RobertaForMaskedLM", {}, ["mlm"]),
    ("hf-roberta", "RobertaForSequenceClassification", {}, ["classifier"]),
    ("hf-roberta", "RobertaForTokenClassification", {}, ["token_classifier"]),
    ("hf-distilbert", "DistilBertModel", {}, []),
    ("hf-distilbert", "DistilBertModel", {"sinusoidal_pos_embds": True}, []),
    ("hf-distilbert", "DistilBertForMaskedLM", {}, ["mlm"]),
    ("hf-distilbert", "DistilBertForSequenceClassification", {}, ["classifier"]),
    ("hf-distilbert", "DistilBertForTokenClassification", {}, ["token_classifier"]),
    ("hf-vit", "ViTForImageClassification", {}, ["classifier"]),
    ("hf-vit-backbone", "ViTModel", {}, ["pooler"]),
    ("hf-vit-backbone", "ViTModel", {"pooler_output_size": 24, "pooler_act": "relu"}, ["pooler"]),
]


def encoder(spec_name: str, cls_name: str, **overrides) -> torch.nn.Module:
    """A tiny model of ``cls_name`` (the spec's example config), every parameter perturbed."""
    return build_hf(spec_name, cls_name, **overrides)


@pytest.mark.parametrize("spec_name, cls_name, overrides, heads", FAMILIES)
def test_the_spec_matches_and_both_checks_pass_in_float64(spec_name, cls_name, overrides, heads):
    model = encoder(spec_name, cls_name, **overrides)
    spec = match_spec(model, REGISTRIES)
    assert spec.name == spec_name
    assert resolve(spec, model, registries=REGISTRIES).heads == heads
    static = static_check(spec, model, registries=REGISTRIES)
    assert static.ok, [str(f) for f in static.findings]
    numeric = numeric_check(spec, model, registries=REGISTRIES)
    assert numeric.ok and numeric.precision == "float64", numeric.failed
    assert numeric.canonicalize_error < 1e-12
    assert max(s.relative_error for s in numeric.sites) < 1e-12


@pytest.mark.parametrize("spec_name, cls_name, overrides", [
    ("hf-bert", "BertModel", {}),
    ("hf-bert", "BertForMaskedLM", {}),
    ("hf-bert", "BertForTokenClassification", {}),
    ("hf-bert", "BertForSequenceClassification", {}),
    ("hf-roberta", "RobertaModel", {}),
    ("hf-roberta", "RobertaForMaskedLM", {}),
    ("hf-roberta", "RobertaForSequenceClassification", {}),
    ("hf-roberta", "RobertaForTokenClassification", {}),
    ("hf-distilbert", "DistilBertModel", {}),
    ("hf-distilbert", "DistilBertForMaskedLM", {}),
    ("hf-distilbert", "DistilBertForSequenceClassification", {}),
    ("hf-distilbert", "DistilBertForTokenClassification", {}),
    ("hf-vit", "ViTForImageClassification", {}),
    ("hf-vit-backbone", "ViTModel", {}),
])
def test_weight_matching_recovers_a_hidden_element(spec_name, cls_name, overrides):
    before, after = hidden_element_distances(symdsl.find_spec(spec_name), encoder(spec_name, cls_name, **overrides))
    assert before > 0.5 and after < 1e-6, (before, after)


def _edited(spec_name: str, old: str, new: str):
    text = Path(symdsl.find_spec(spec_name).file).read_text()
    edited = text.replace(old, new)
    assert edited != text, old
    return symdsl.load_spec_text(edited, file=f"{spec_name}-edited.yaml")


@pytest.mark.parametrize("spec_name, cls_name, old", [
    ("hf-roberta", "RobertaForSequenceClassification",
     'resid:      {group: permutation, size: d, doc: "residual features (post-LN: permutation only)"}'),
    ("hf-distilbert", "DistilBertForSequenceClassification",
     'resid:      {group: permutation, size: d, doc: "residual features (post-LN: permutation only)"}'),
    ("hf-vit-backbone", "ViTModel", "resid:      {group: permutation, size: d, doc: residual features (the output carries them)}"),
])
def test_a_rotation_of_a_post_ln_or_output_normed_stream_fails_both_checks_at_a_layernorm(spec_name, cls_name, old):
    spec = _edited(spec_name, old, "resid:      {group: orthogonal, size: d, preserve: ones}")
    model = encoder(spec_name, cls_name)
    static = static_check(spec, model, registries=REGISTRIES)
    assert not static.ok and static.findings[0].op == "layer_norm"
    assert "gain is not constant" in static.findings[0].message
    numeric = numeric_check(spec, model, registries=REGISTRIES)
    assert not numeric.ok and "resid" in numeric.failed_sites and numeric.sites[0].relative_error > 1e-3


def test_the_token_classifier_reads_the_residual_stream_and_the_pooled_one_the_pooler():
    # the token head unbound: a permutation of the residual stream moves every token's logits
    spec = _edited("hf-bert", 'classifier.weight: "_ resid\'"', 'classifier.weight: "_ _"')
    model = encoder("hf-bert", "BertForTokenClassification")
    static = static_check(spec, model, registries=REGISTRIES)
    assert not static.ok and any(f.module == "classifier" for f in static.findings)
    assert "resid" in numeric_check(spec, model, registries=REGISTRIES).failed_sites
    # ... and the pooled head read as the residual stream breaks sequence classification at the same tensor
    spec = _edited("hf-bert", 'classifier.weight: "_ pool\'"', 'classifier.weight: "_ resid\'"')
    numeric = numeric_check(spec, encoder("hf-bert", "BertForSequenceClassification"), registries=REGISTRIES)
    assert {"resid", "pool"} <= set(numeric.failed_sites)


def test_heads_that_share_tensor_names_are_chosen_by_requires_and_unless():
    # without 'unless', a token-classification model has no pooler, and the pooled head, which also
    # names classifier.weight, would claim it: 'requires' keeps it off
    model = encoder("hf-bert", "BertForTokenClassification")
    spec = _edited("hf-bert", '    requires: ["${prefix}pooler.dense.weight"]\n', "")
    with pytest.raises(symdsl.SymdslError, match=r"heads.classifier.tensors.classifier.weight: name 'pool' in the "
                                                  "pattern of 'classifier.weight' is neither a site nor a dimension"):
        resolve(spec, model, registries=REGISTRIES)


def test_a_roberta_classifier_s_tanh_units_are_a_site_of_their_own():
    model = encoder("hf-roberta", "RobertaForSequenceClassification")
    resolved = resolve(symdsl.find_spec("hf-roberta"), model, registries=REGISTRIES)
    assert resolved.sites["cls"].kind.name == "permutation" and resolved.sites["cls"].size == 32
    spec = _edited("hf-roberta", 'classifier.out_proj.weight: "_ cls\'"', 'classifier.out_proj.weight: "_ cls"')
    assert numeric_check(spec, model, registries=REGISTRIES).ok    # a permutation is its own dual-transpose
    spec = _edited("hf-roberta", 'classifier.out_proj.weight: "_ cls\'"', 'classifier.out_proj.weight: "_ _"')
    assert "cls" in numeric_check(spec, model, registries=REGISTRIES).failed_sites


def test_the_vit_backbone_declares_its_pooled_output():
    spec = _edited("hf-vit-backbone", '    outputs:\n      pooler_output: "_ pool"\n', "")
    model = encoder("hf-vit-backbone", "ViTModel")
    static = static_check(spec, model, registries=REGISTRIES)
    assert not static.ok and "pool" in str(static.findings[0])


def test_example_inputs_follow_the_text_and_image_configs():
    for spec_name, cls_name, overrides, key, shape in [
        ("hf-bert", "BertForMaskedLM", {"max_position_embeddings": 5}, "input_ids", (2, 5)),
        ("hf-roberta", "RobertaForMaskedLM", {"max_position_embeddings": 7}, "input_ids", (2, 5)),   # pad_token_id 1
        ("hf-vit", "ViTForImageClassification", {"image_size": 12, "num_channels": 1}, "pixel_values", (2, 1, 12, 12)),
    ]:
        model = encoder(spec_name, cls_name, **overrides)
        spec = symdsl.find_spec(spec_name)
        resolved = resolve(spec, model, registries=REGISTRIES)
        assert tuple(make_inputs(spec, {**model_config(model), **resolved.dims})[key].shape) == shape
        assert symdsl.check(spec, model).ok


def test_inputs_override_on_a_hugging_face_vit(capsys):
    from symdsl.cli.main import main

    assert main(["check", "hf-vit", "--inputs", "pixel_values=1x3x8x8", "--numeric-only"]) == 0
    assert main(["check", "hf-vit", "--inputs", "pixel_values=1x3x12x12", "--numeric-only"]) == 1
    assert "Input image size (12*12) doesn't match model (8*8)" in capsys.readouterr().err


@pytest.mark.parametrize("spec_name, cls_name", [(s, c) for s, c, overrides, _ in FAMILIES if not overrides])
def test_symdsl_check_on_a_saved_folder_finds_the_spec_and_passes(spec_name, cls_name, tmp_path, capsys):
    from symdsl.cli.main import main

    encoder(spec_name, cls_name).save_pretrained(tmp_path / "model")
    assert main(["check", "--model", str(tmp_path / "model")]) == 0
    out = capsys.readouterr().out
    assert f"spec {spec_name} " in out and "ok: every op respects" in out and "result: OK" in out
