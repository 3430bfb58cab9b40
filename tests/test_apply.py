"""`symdsl apply`: a saved transform moves another checkpoint of B's architecture into A's frame.

On B itself it reproduces `align`'s output bit for bit; on a fine-tuned descendant of B it keeps
that model's function; a transform that does not fit (another width, another architecture, not
a transform) is refused naming the file and the site."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import symdsl
from symdsl.cli.main import main
from symdsl.errors import UsageError

from safety_models import gpt2_folder, tiny_gpt2


@pytest.fixture
def aligned(tmp_path, capsys):
    a, b = gpt2_folder(tmp_path / "a", 0), gpt2_folder(tmp_path / "b", 1)
    assert main(["align", str(a), str(b), "-o", str(tmp_path / "aligned")]) == 0
    capsys.readouterr()
    return tmp_path, a, b, tmp_path / "aligned"


def test_applying_to_b_reproduces_align_bit_for_bit(aligned, capsys):
    tmp_path, _, b, out = aligned
    assert main(["apply", str(out), str(b), "-o", str(tmp_path / "again")]) == 0
    assert "to the B it was found for" in capsys.readouterr().out
    first, second = load_file(str(out / "model.safetensors")), load_file(str(tmp_path / "again" / "model.safetensors"))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert (tmp_path / "again" / "README.md").is_file()
    record = json.loads((tmp_path / "again" / "symdsl.json").read_text())
    assert record["command"] == "apply" and record["spec"] == "hf-gpt2"


def test_the_transform_records_what_it_fits(aligned):
    _, _, _, out = aligned
    with safe_open(str(out / "transform.safetensors"), framework="pt") as handle:
        meta = handle.metadata()
        keys = set(handle.keys())
    sites = json.loads(meta["sites"])
    assert meta["format"] == "symdsl-transform" and meta["spec"] == "hf-gpt2"
    assert set(sites) == keys and sites["resid"]["kind"] == "orthogonal" and sites["resid"]["shape"] == [32, 32]
    assert len(meta["a_sha256"]) == len(meta["b_sha256"]) == 64 and meta["a_sha256"] != meta["b_sha256"]


def test_a_fine_tuned_descendant_of_b_keeps_its_function(aligned, capsys):
    tmp_path, _, _, out = aligned
    child = tiny_gpt2(1)
    with torch.no_grad():                              # a "fine-tuned" B: B plus a small update
        for p in child.parameters():
            p.add_(0.01 * torch.randn_like(p))
    moved = symdsl.apply(out, child)
    assert moved.info["same_b"] is False
    ids = torch.randint(0, 64, (2, 8))
    assert torch.allclose(moved.model(ids).logits, child(ids).logits, atol=1e-4)
    child.save_pretrained(tmp_path / "child")
    assert main(["apply", str(out), str(tmp_path / "child"), "-o", str(tmp_path / "child-moved")]) == 0
    assert "a model other than the B it was found for" in capsys.readouterr().out


@pytest.mark.parametrize("overrides", [dict(n_embd=48), dict(n_head=2)], ids=["wider", "other-heads"])
def test_a_transform_that_does_not_fit_is_refused_naming_the_site(aligned, overrides):
    _, _, _, out = aligned
    with pytest.raises(UsageError, match=r"site '[\w.]+' needs an element of shape .* holds"):
        symdsl.apply(out, tiny_gpt2(2, **overrides))


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "nothing-here", "no transform at"),
    (lambda d: (d / "bad.safetensors").write_bytes(b"not safetensors") and d / "bad.safetensors",
     "not a readable safetensors file"),
])
def test_a_missing_or_unreadable_transform_is_refused_naming_the_file(tmp_path, capsys, make, message):
    gpt2_folder(tmp_path / "b", 1)
    where = make(tmp_path)
    code = main(["apply", str(where), str(tmp_path / "b"), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code != 0 and message in err and str(where) in err and "internal error" not in err


def test_a_transform_written_before_the_metadata_still_loads(aligned):
    tmp_path, _, b, out = aligned
    elements = load_file(str(out / "transform.safetensors"))
    save_file(elements, str(out / "transform.safetensors"))           # no metadata: the spec comes from symdsl.json
    moved = symdsl.apply(out, symdsl.load_model(str(b)))
    assert moved.spec.name == "hf-gpt2" and moved.info["same_b"] is None
