"""T5 (hf-t5): an encoder and a decoder sharing one embedding and one rotation of the residual
stream (T5's hand-written RMS norm, gains folded; lm_head untied and read through d^-1/2), head
permutations shared by all blocks of a stack (block 0's relative position bias is reused by every
block), per-block cross-attention heads, and both feed-forward forms (ReLU v1.0, gated v1.1)."""
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

CONFIG = dict(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2, num_heads=4,
              decoder_start_token_id=0, relative_attention_num_buckets=8)
GATED = dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False)       # T5 v1.1, Flan-T5


def t5(seed: int = 0, **overrides):
    return tiny("T5ForConditionalGeneration", {**CONFIG, **overrides}, seed)


@pytest.mark.parametrize("overrides", [{}, GATED], ids=["v1.0", "v1.1-gated"])
def test_the_spec_matches_and_both_checks_pass(overrides):
    model = t5(**overrides)
    spec = symdsl.find_spec("hf-t5")
    assert symdsl.api.pipeline.spec_for(None, model, REGISTRIES).name == "hf-t5"
    sites = resolve(spec, model, registries=REGISTRIES).sites
    assert {"enc", "dec", "cross.0", "cross.1", "ff.0", "ffd.1"} <= set(sites) and "enc.0" not in sites
    report = numeric_check(spec, model, registries=REGISTRIES)
    assert report.ok, report.failed
    # T5's norm computes its variance in float32: the check runs at float32's precision and says so
    assert report.precision == "float32" and max(s.relative_error for s in report.sites) < 1e-5
    static = static_check(spec, model, registries=REGISTRIES)
    assert static.ok, [str(f) for f in static.findings]


def test_the_shared_relative_bias_ties_the_heads_of_every_encoder_block():
    # leaving the bias table out of the head permutation breaks every block that adds it
    spec = edited_spec("hf-t5", ('relative_attention_bias.weight: "_ enc"', 'relative_attention_bias.weight: "_ _"'))
    model = t5()
    assert not static_check(spec, model, registries=REGISTRIES).ok
    assert "enc" in numeric_check(spec, model, registries=REGISTRIES).failed_sites


@pytest.mark.parametrize("overrides", [{}, GATED], ids=["v1.0", "v1.1-gated"])
def test_weight_matching_recovers_a_hidden_element(overrides):
    before, after = hidden_element_distances(symdsl.find_spec("hf-t5"), t5(**overrides))
    assert before > 0.5 and after < 1e-6, (before, after)


def test_symdsl_check_on_a_saved_folder_finds_the_spec_and_passes(tmp_path, capsys):
    from symdsl.cli.main import main

    t5().save_pretrained(tmp_path / "tiny")
    assert main(["check", "--model", str(tmp_path / "tiny")]) == 0
    out = capsys.readouterr().out
    assert "spec hf-t5" in out and "result: OK" in out


def _structure(sites) -> list:
    """Each site's (kind, the kind of the site it is per or None, size), sorted: names aside."""
    return sorted((s.kind.name, sites[s.per].kind.name if s.per else None, s.size) for s in sites.values())


@pytest.mark.parametrize("overrides", [{}, GATED], ids=["v1.0", "v1.1-gated"])
def test_the_infer_draft_has_the_shipped_structure_and_passes(overrides):
    model = t5(**overrides)
    draft = symdsl.infer(model, registries=REGISTRIES)
    assert draft.example["output"] == "logits" and not draft.notes
    drafted = resolve(symdsl.load_spec_text(draft.text, trust_code=True), model, registries=REGISTRIES)
    shipped = resolve(symdsl.find_spec("hf-t5"), model, registries=REGISTRIES)
    assert _structure(drafted.sites) == _structure(shipped.sites)
    assert_same_sites(drafted, shipped, model)      # the same tensors' axes, up to the sites' names
    assert check_draft(draft.text, registries=REGISTRIES).ok
