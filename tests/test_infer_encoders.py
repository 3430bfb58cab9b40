"""`symdsl infer` on the encoder families of tests/test_encoders.py: each draft has the shipped
spec's site structure (kinds, what they are per, sizes, preserve) and passes its own checks."""
from __future__ import annotations

import pytest

import symdsl
from conftest import REGISTRIES
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
    drafted = resolve(symdsl.load_spec_text(draft.text, trust_code=True), model, registries=REGISTRIES).sites
    shipped = resolve(symdsl.find_spec(spec_name), model, registries=REGISTRIES).sites
    assert _structure(drafted) == _structure(shipped)
    assert check_draft(draft.text, registries=REGISTRIES).ok
