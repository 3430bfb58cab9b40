"""`symdsl infer` on the encoder families of tests/test_encoders.py: each draft has the shipped
spec's sites (kinds, what they are per, sizes, preserve, and the tensors and outputs each acts on, up to
the sites' names) and passes its own checks."""
from __future__ import annotations

import pytest

import symdsl
from conftest import REGISTRIES
from site_compare import assert_same_sites
from symdsl.infer import check_draft
from symdsl.spec import resolve
from test_encoders import FAMILIES, encoder


def _structure(sites) -> list:
    return sorted((s.kind.name, sites[s.per].kind.name if s.per else None, s.size, s.options.get("preserve"))
                  for s in sites.values())


@pytest.mark.parametrize("spec_name, cls_name, overrides", [f[:3] for f in FAMILIES],
                         ids=[f"{f[1]}{'-' + '-'.join(f[2]) if f[2] else ''}" for f in FAMILIES])
def test_the_draft_has_the_shipped_structure_and_passes(spec_name, cls_name, overrides):
    model = encoder(spec_name, cls_name, **overrides)
    draft = symdsl.infer(model, registries=REGISTRIES)
    drafted = resolve(symdsl.load_spec_text(draft.text, trust_code=True), model, registries=REGISTRIES)
    shipped = resolve(symdsl.find_spec(spec_name), model, registries=REGISTRIES)
    assert _structure(drafted.sites) == _structure(shipped.sites)
    assert_same_sites(drafted, shipped, model)      # ... and on the same tensors' axes, outputs included
    assert check_draft(draft.text, registries=REGISTRIES).ok
