"""`symdsl infer` on the SwiGLU/RMSNorm ViT (aimv2): with a classifier and built with
num_classes=0 (timm then returns the pooled features, which the draft declares equivariant), the
draft has the shipped timm-vit-swiglu spec's sites (names, kinds, per, sizes) and passes both
checks on its own example."""
from __future__ import annotations

import pytest

import symdsl
from conftest import REGISTRIES
from symdsl.infer import check_draft
from symdsl.spec import resolve

pytest.importorskip("timm")
from vit_families import TINY, tiny_aimv2  # noqa: E402  (needs timm)


def _structure(sites) -> dict:
    return {key: (s.kind.name, s.per, s.size, s.options.get("preserve")) for key, s in sites.items()}


@pytest.mark.parametrize("num_classes", [0, 10])
def test_the_aimv2_draft_has_the_shipped_sites_and_passes(num_classes):
    model = tiny_aimv2(num_classes=num_classes)
    draft = symdsl.infer(model, timm_name="aimv2_large_patch14_224", config={**TINY, "num_classes": num_classes},
                         registries=REGISTRIES)
    drafted = resolve(symdsl.load_spec_text(draft.text, trust_code=True), model, registries=REGISTRIES).sites
    shipped = resolve(symdsl.find_spec("timm-vit-swiglu"), model, registries=REGISTRIES).sites
    assert _structure(drafted) == _structure(shipped)
    assert ("outputs:" in draft.text) == (num_classes == 0)      # the pooled features, declared equivariant
    report = check_draft(draft.text, registries=REGISTRIES)
    assert report.ok, report


def test_only_a_timm_model_without_classes_returns_features():
    import torch

    from symdsl.infer.outputs import FEATURE_OUTPUTS, feature_outputs

    assert "output" in feature_outputs(tiny_aimv2()) and "output" not in feature_outputs(tiny_aimv2(num_classes=3))
    assert feature_outputs(torch.nn.Linear(2, 2)) == FEATURE_OUTPUTS          # a plain module's output stays fixed
