"""CLIP (hf-clip for CLIPModel; hf-clip-text, hf-clip-vision for the single towers): the similarity
logits are CLIPModel's invariant, its text stream takes rotations fixing the ones vector (LayerNorm
readers only, the last one read by text_projection at the end-of-text token), its vision stream a
permutation (pre_layrnorm writes the stream), and the joint embedding space any rotation. A tower
alone returns normed features: a permutation stream and equivariant outputs."""
from __future__ import annotations

import pytest

import symdsl
from conftest import REGISTRIES
from decoder_families import edited_spec, hidden_element_distances, tiny
from site_compare import assert_same_sites
from symdsl.check.numeric import numeric_check
from symdsl.check.static import static_check
from symdsl.infer import check_draft
from symdsl.spec import resolve

BLOCKS = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4)
TEXT = dict(vocab_size=64, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, **BLOCKS)
VISION = dict(image_size=16, patch_size=8, **BLOCKS)
MODELS = {
    "hf-clip": lambda seed=0: tiny("CLIPModel", dict(projection_dim=24, text_config=TEXT, vision_config=VISION), seed),
    "hf-clip-text": lambda seed=0: tiny("CLIPTextModel", TEXT, seed),
    "hf-clip-vision": lambda seed=0: tiny("CLIPVisionModel", VISION, seed),
}


@pytest.mark.parametrize("spec_name", sorted(MODELS))
def test_each_class_matches_its_spec_and_both_checks_pass(spec_name):
    model = MODELS[spec_name]()
    spec = symdsl.find_spec(spec_name)
    assert symdsl.api.pipeline.spec_for(None, model, REGISTRIES).name == spec_name
    report = numeric_check(spec, model, registries=REGISTRIES)
    assert report.ok and report.precision == "float64", report.failed
    assert max(s.relative_error for s in report.sites) < 1e-12
    static = static_check(spec, model, registries=REGISTRIES)
    assert static.ok, [str(f) for f in static.findings]


@pytest.mark.parametrize("edit, site", [
    # pre_layrnorm's gain and bias sit on the vision stream: a rotation there is refused
    (("vision:        {group: permutation,", "vision:        {group: orthogonal,"), "vision"),
    # the joint space must move in both projections, or the similarities change
    (('text_projection.weight: "joint text\'"', 'text_projection.weight: "_ text\'"'), "joint"),
])
def test_a_wrong_declaration_is_refused_by_both_checks(edit, site):
    spec, model = edited_spec("hf-clip", edit), MODELS["hf-clip"]()
    assert not static_check(spec, model, registries=REGISTRIES).ok
    assert site in numeric_check(spec, model, registries=REGISTRIES).failed_sites


@pytest.mark.parametrize("spec_name", sorted(MODELS))
def test_weight_matching_recovers_a_hidden_element(spec_name):
    before, after = hidden_element_distances(symdsl.find_spec(spec_name), MODELS[spec_name]())
    assert before > 0.5 and after < 1e-6, (before, after)


@pytest.mark.parametrize("spec_name", sorted(MODELS))
def test_symdsl_check_on_a_saved_clip_folder_finds_the_spec_and_passes(spec_name, tmp_path, capsys):
    from symdsl.cli.main import main

    MODELS[spec_name]().save_pretrained(tmp_path / "clip")
    assert main(["check", "--model", str(tmp_path / "clip")]) == 0
    out = capsys.readouterr().out
    assert f"spec {spec_name} " in out and "result: OK" in out


def _structure(sites) -> list:
    return sorted((s.kind.name, sites[s.per].kind.name if s.per else None, s.size,
                   s.options.get("preserve")) for s in sites.values())


@pytest.mark.parametrize("spec_name", sorted(MODELS))
def test_the_infer_draft_has_the_shipped_structure_and_passes(spec_name):
    model = MODELS[spec_name]()
    draft = symdsl.infer(model, registries=REGISTRIES)
    drafted = resolve(symdsl.load_spec_text(draft.text, trust_code=True), model, registries=REGISTRIES)
    shipped = resolve(symdsl.find_spec(spec_name), model, registries=REGISTRIES)
    assert _structure(drafted.sites) == _structure(shipped.sites)
    assert_same_sites(drafted, shipped, model)      # the same tensors' axes and outputs, up to the sites' names
    assert check_draft(draft.text, registries=REGISTRIES).ok
