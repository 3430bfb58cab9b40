"""Every symmetry a shipped spec declares holds numerically in float64, and the check can fail."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import SHIPPED, build_hf
from symdsl.check import numeric_check
from symdsl.models import build_example
from symdsl.spec import load_spec_text, resolve
from symdsl import find_spec
from conftest import REGISTRIES
from test_llama import llama

TOL = 1e-9


@pytest.mark.parametrize("name", SHIPPED)
def test_each_site_alone_and_all_together_leave_outputs_unchanged(name):
    spec = find_spec(name)
    report = numeric_check(spec, registries=REGISTRIES)
    resolved = resolve(spec, build_example(spec), registries=REGISTRIES)
    assert [s.site for s in report.sites] == list(resolved.sites) + ["*"]
    assert report.canonicalize_error < TOL
    worst = max(report.sites, key=lambda s: s.relative_error)
    assert worst.relative_error < TOL, worst
    assert report.ok


@pytest.mark.parametrize("name", SHIPPED)
def test_every_parameter_is_accounted_for(name):
    spec = find_spec(name)
    model = build_example(spec)
    resolved = resolve(spec, model, registries=REGISTRIES)
    names = set(model.state_dict())
    assert names == set(resolved.tensors) | resolved.invariant
    assert not set(resolved.tensors) & resolved.invariant


@pytest.mark.parametrize("name", SHIPPED)
def test_spec_exercises_its_group_kinds(name):
    kinds = {s.kind.name for s in resolve(find_spec(name), build_example(find_spec(name)), registries=REGISTRIES).sites.values()}
    expected = {"permutation", "invertible"} | ({"orthogonal"} if name != "hf-bert" else set())
    assert kinds == expected


@pytest.mark.parametrize("spec_name, class_name", [
    ("hf-gpt2", "GPT2ForSequenceClassification"),
    ("hf-bert", "BertModel"),
    ("hf-bert", "BertForSequenceClassification"),
    ("hf-bert", "BertForPreTraining"),
    ("hf-bert", "BertForQuestionAnswering"),
])
def test_other_matched_classes_hold_too(spec_name, class_name):
    model = build_hf(spec_name, class_name, pad_token_id=0)
    report = numeric_check(find_spec(spec_name), model, registries=REGISTRIES)
    assert report.ok, [s for s in report.sites if not s.ok]


def test_bare_gpt2_backbone_permutes_its_returned_features():
    spec = find_spec("hf-gpt2-backbone")
    report = numeric_check(spec, registries=REGISTRIES)
    assert report.ok
    resolved = resolve(spec, build_example(spec), registries=REGISTRIES)
    assert resolved.sites["resid"].kind.name == "permutation" and "last_hidden_state" in resolved.outputs


def _edited(name: str, old: str, new: str):
    text = Path(find_spec(name).file).read_text()
    assert old in text, old
    return load_spec_text(text.replace(old, new, 1), f"{name}-edited.yaml")


@pytest.mark.parametrize("name, old, new, broken", [
    # BERT is post-LN: its residual admits permutations, not rotations
    ("hf-bert", "resid:      {group: permutation", "resid:      {group: orthogonal", "resid"),
    # without `preserve: ones`, LayerNorm does not commute with the rotation
    ("hf-gpt2", "size: d, preserve: ones", "size: d", "resid"),
    # queries and keys both primal: q.k is no longer invariant under GL
    ("hf-gpt2", "heads.${i} qk.${i}' | heads.${i} ov.${i}]\"\n  h.${i}.attn.c_attn.bias",
     "heads.${i} qk.${i} | heads.${i} ov.${i}]\"\n  h.${i}.attn.c_attn.bias", "qk.0"),
    # the output projection must read values with g^-T
    ("timm-vit", "\"resid (heads.${i} ov.${i}')\"", "\"resid (heads.${i} ov.${i})\"", "ov.0"),
    # the MLP is not rotation-invariant across GELU
    ("timm-vit", "mlp.${i}:   {group: permutation", "mlp.${i}:   {group: orthogonal", "mlp.0"),
])
def test_wrong_specs_fail_the_numeric_check(name, old, new, broken):
    report = numeric_check(_edited(name, old, new), registries=REGISTRIES)
    assert not report.ok
    failed = {s.site for s in report.failed}
    assert broken in failed and "*" in failed


def test_skipping_the_layernorm_fold_breaks_the_rotation():
    text = Path(find_spec("hf-gpt2").file).read_text()
    start = text.index("canonicalize:\n  - fold_layernorm")
    end = text.index("sites:", start)
    spec = load_spec_text(text[:start] + text[end:], "no-canon.yaml")
    report = numeric_check(spec, registries=REGISTRIES)
    assert not report.ok and "resid" in {s.site for s in report.failed}


def test_the_numeric_check_never_tests_a_small_site_with_its_identity():
    # a permutation of 2 is the identity half of the time; the check redraws it, so a spec that
    # moves two query heads on the queries but not on the output projection fails at every seed
    text = Path(find_spec("hf-llama").file).read_text()
    wrong = load_spec_text(text.replace('"resid (kv.${i} qh.${i} ov.${i}\')"', '"resid (kv.${i} g ov.${i}\')"'))
    model = llama()                                       # 4 query heads, 2 key/value heads: g = 2
    for seed in range(6):
        report = numeric_check(wrong, model, registries=REGISTRIES, seed=seed)
        assert {"qh.0", "qh.1"} <= set(report.failed_sites), (seed, report.failed_sites)
