"""`symdsl infer` on the SwiGLU/RMSNorm ViT (aimv2): with a classifier and built with
num_classes=0 (timm then returns the pooled features, which the draft declares equivariant), the
draft has the shipped timm-vit-swiglu spec's sites (names, kinds, per, sizes) and passes both
checks on its own example. On EVA02 (RoPE from a precomputed table, a zero k-bias buffer) the
draft has timm-eva02's sites, rotary q/k included."""
from __future__ import annotations

import pytest

import symdsl
from conftest import REGISTRIES
from site_compare import assert_same_sites
from symdsl.infer import check_draft
from symdsl.spec import resolve

pytest.importorskip("timm")
from vit_families import TINY, tiny_aimv2, tiny_eva02  # noqa: E402  (needs timm)


def _structure(sites) -> dict:
    return {key: (s.kind.name, s.per, s.size, s.options.get("preserve")) for key, s in sites.items()}


@pytest.mark.parametrize("num_classes", [0, 10])
def test_the_aimv2_draft_has_the_shipped_sites_and_passes(num_classes):
    model = tiny_aimv2(num_classes=num_classes)
    draft = symdsl.infer(model, timm_name="aimv2_large_patch14_224", config={**TINY, "num_classes": num_classes},
                         registries=REGISTRIES)
    drafted = resolve(symdsl.load_spec_text(draft.text, trust_code=True), model, registries=REGISTRIES)
    shipped = resolve(symdsl.find_spec("timm-vit-swiglu"), model, registries=REGISTRIES)
    assert _structure(drafted.sites) == _structure(shipped.sites)
    assert_same_sites(drafted, shipped, model)      # the same tensors' axes and outputs
    assert ("outputs:" in draft.text) == (num_classes == 0)      # the pooled features, declared equivariant
    report = check_draft(draft.text, registries=REGISTRIES)
    assert report.ok, report


def test_only_a_timm_model_without_classes_returns_features():
    import torch

    from symdsl.infer.outputs import FEATURE_OUTPUTS, feature_outputs

    assert "output" in feature_outputs(tiny_aimv2()) and "output" not in feature_outputs(tiny_aimv2(num_classes=3))
    assert feature_outputs(torch.nn.Linear(2, 2)) == FEATURE_OUTPUTS          # a plain module's output stays fixed


@pytest.mark.parametrize("num_classes", [0, 10])
def test_the_eva02_draft_has_the_shipped_sites_and_passes(num_classes):
    model = tiny_eva02(num_classes=num_classes)
    draft = symdsl.infer(model, timm_name="eva02_tiny_patch14_224",
                         config={**TINY, "ref_feat_shape": [2, 2], "num_classes": num_classes}, registries=REGISTRIES)
    drafted_spec = resolve(symdsl.load_spec_text(draft.text, trust_code=True), model, registries=REGISTRIES)
    shipped_spec = resolve(symdsl.find_spec("timm-eva02"), model, registries=REGISTRIES)
    # the same tensors' axes and outputs; with a classifier the one documented difference below
    assert_same_sites(drafted_spec, shipped_spec, model,
                      {"resid": ("orthogonal", None, 32, None, "ones")} if num_classes else None)
    drafted, shipped = _structure(drafted_spec.sites), _structure(shipped_spec.sites)
    if num_classes:
        # the classifier takes fc_norm's gain: the draft folds the norms and rotates the stream
        # fixing the ones vector, which the shipped spec leaves undeclared (a permutation)
        assert drafted.pop("resid") == ("orthogonal", None, 32, "ones") and shipped.pop("resid")[0] == "permutation"
    assert drafted == shipped
    assert drafted["qk.0"] == ("rotary", "heads.0", 8, None) and "pairs: interleaved" in draft.text
    assert ("outputs:" in draft.text) == (num_classes == 0)
    report = check_draft(draft.text, registries=REGISTRIES)
    assert report.ok, report


def test_an_eva02_whose_k_bias_is_not_zero_gets_no_key_site():
    import torch

    model = tiny_eva02()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.k_bias.fill_(0.5)                    # the keys get a fixed offset
    draft = symdsl.infer(model, registries=REGISTRIES)
    assert "qk." not in draft.text and "heads." not in draft.text
    assert "non-persistent buffer ['blocks.0.attn.k_bias']" in draft.text
    report = check_draft(draft.text, model, registries=REGISTRIES)
    assert report.ok, report
