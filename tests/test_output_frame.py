"""Feature models (BertModel, the LlamaModel backbone) return outputs their spec declares equivariant:
aligned B returns them in A's frame. align says so (notes, symdsl.json, the command's output), writes
output_transform.safetensors, and undo_output_frame maps them back to B's exactly (float64); with
keep_output_frame the sites acting on them stay at the identity for every matcher, and the aligned
model is a drop-in replacement for B. A model returning logits gets no note and no file."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import symdsl
from conftest import REGISTRIES, build_hf, relative_distance
from decoder_families import TEXT, tiny
from symdsl.act import act_state_dict, random_transform
from symdsl.api.output_frame import OUTPUT_TRANSFORM_FILE, OutputFrame, hold_sites, is_identity
from symdsl.api.pipeline import match, prepare
from symdsl.cli.main import main
from symdsl.data import text_dataset
from symdsl.errors import UsageError
from symdsl.models import save_model
from symdsl.spec import resolve
from test_llama import CONFIG as LLAMA

IDS = torch.randint(2, 64, (2, 8), generator=torch.Generator().manual_seed(0))


@pytest.fixture(autouse=True)
def exact_rms_norm(monkeypatch):
    """LlamaRMSNorm computes in float32 inside even in a float64 model (1e-7 noise on every output):
    the float64 formula, so that equalities hold to 1e-10."""
    from transformers.models.llama import modeling_llama

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", forward)


def bert(seed: int = 0) -> torch.nn.Module:
    """A tiny BertModel (the spec's example config: hidden 32, 2 layers, 4 heads), every parameter perturbed."""
    return tiny("BertModel", symdsl.find_spec("hf-bert").document.example.config, seed).double()


def llama_backbone(seed: int = 0) -> torch.nn.Module:
    return tiny("LlamaModel", LLAMA, seed).double()         # hidden 32, 2 layers, 4 heads, 2 KV heads


def outputs(model, ids=IDS) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {k: v for k, v in model(input_ids=ids).items() if isinstance(v, torch.Tensor)}


def worst(x: dict, y: dict) -> float:
    return max(float((x[k] - y[k]).abs().max() / y[k].abs().max()) for k in y)


def hidden_copy(model, seed: int = 3, sites=None):
    """``model`` moved by a random element of ``sites`` (default every site): B for a recovery test."""
    resolved = resolve(symdsl.find_spec("hf-bert" if "Bert" in type(model).__name__ else "hf-llama-backbone"), model,
                       registries=REGISTRIES)
    moved = type(model)(model.config).double().eval()
    moved.load_state_dict(act_state_dict(resolved, model.state_dict(), random_transform(resolved, sites, seed=seed)))
    return moved, resolved


@pytest.mark.parametrize("build, sites", [(bert, ["resid", "pool"]), (llama_backbone, ["resid"])])
def test_undo_output_frame_gives_back_b_s_features(build, sites):
    a, b = build(0), build(1)
    aligned = symdsl.align(a, b)
    moved, back = outputs(aligned.model), symdsl.undo_output_frame(outputs(aligned.model), aligned)
    assert worst(moved, outputs(b)) > 1e-2                  # B's features really come out moved ...
    assert worst(back, outputs(b)) < 1e-10                  # ... and the inverse elements bring them back
    assert aligned.output_frame.moved == sites
    frame_notes = [n for n in aligned.notes if "comes out in A's frame" in n]
    assert len(frame_notes) == len(aligned.output_frame.outputs)
    assert "last_hidden_state comes out in A's frame, not B's: aligned(x) = act(g, B(x)) on its axis 2 (site 'resid', " \
           "permutation)" in frame_notes[0] and "keep_output_frame=True" in frame_notes[0]
    assert aligned.record()["output_frame"]["file"] == OUTPUT_TRANSFORM_FILE


@pytest.mark.parametrize("build", [bert, llama_backbone])
def test_a_hidden_element_is_still_recovered_and_its_output_part_undone(build):
    a = build(0)
    b, resolved = hidden_copy(a)
    aligned = symdsl.align(a, b)
    # weight matching recovers the hidden element: aligned B is A again, tensor for tensor
    assert relative_distance(resolved, aligned.model.state_dict(), a.state_dict()) < 1e-6
    assert worst(outputs(aligned.model), outputs(a)) < 1e-10
    assert worst(symdsl.undo_output_frame(outputs(aligned.model), aligned), outputs(b)) < 1e-10


@pytest.mark.parametrize("build", [bert, llama_backbone])
def test_keep_output_frame_returns_b_s_outputs_and_still_matches_the_other_sites(build, tmp_path):
    a = build(0)
    inner = [s for s in resolve(symdsl.find_spec("hf-bert" if build is bert else "hf-llama-backbone"), a,
                                registries=REGISTRIES).sites if s not in ("resid", "pool")]
    b, resolved = hidden_copy(a, sites=inner)              # moved everywhere but on the output sites
    aligned = symdsl.align(a, b, keep_output_frame=True, out=tmp_path / "out")
    frame = aligned.output_frame
    assert frame.held == [s for s in ("resid", "pool") if s in resolved.sites] and frame.moved == []
    assert all(is_identity(frame.sites[s], aligned.transform[s]) for s in frame.held)   # the output transform: identity
    assert worst(outputs(aligned.model), outputs(b)) < 1e-10      # a drop-in replacement for B
    assert relative_distance(resolved, aligned.model.state_dict(), a.state_dict()) < 1e-6  # the rest still recovered
    assert not (tmp_path / "out" / OUTPUT_TRANSFORM_FILE).exists()
    assert any(n.startswith("B's output frame kept") for n in aligned.notes)
    record = json.loads((tmp_path / "out" / "symdsl.json").read_text())
    assert record["output_frame"]["held_sites"] == frame.held and record["output_frame"]["file"] is None


def test_keep_output_frame_holds_the_sites_for_the_activation_and_learned_matchers_too():
    a, b = llama_backbone(0), llama_backbone(1)
    data = text_dataset(TEXT, block_size=16)
    free = symdsl.align(a, b, matcher="activation", data=data)
    kept = symdsl.align(a, b, matcher="activation", data=data, keep_output_frame=True)
    assert free.output_frame.moved == ["resid"] and kept.output_frame.moved == []
    assert worst(outputs(kept.model), outputs(b)) < 1e-10
    assert not all(is_identity(kept.resolved.sites[s], g) for s, g in kept.transform.items())   # the rest moved
    # learned matching needs a task loss (a backbone has none): the same held-site spec on the causal LM
    lm = [tiny("LlamaForCausalLM", LLAMA, seed) for seed in (0, 1)]
    prepared = prepare(lm)
    held = hold_sites(prepared.resolved, ["resid", "mlp.0"])
    result = match(dataclasses.replace(prepared, resolved=held), 1, "learned", data=data, steps=4, eval_every=2)
    assert "resid" not in result.elements and "mlp.0" not in result.elements and "mlp.1" in result.elements


def test_a_model_returning_logits_gets_no_note_and_no_file(tmp_path):
    a, b = (build_hf("hf-bert", "BertForMaskedLM").double() for _ in range(2))
    b.load_state_dict({k: v + 0.01 * torch.randn_like(v) for k, v in b.state_dict().items()})
    aligned = symdsl.align(a, b, out=tmp_path / "out")
    assert "last_hidden_state" in aligned.resolved.outputs      # declared for the bare encoder ...
    assert aligned.output_frame.outputs == {}                   # ... but this model returns logits
    assert not any("A's frame" in n for n in aligned.notes)
    assert not (tmp_path / "out" / OUTPUT_TRANSFORM_FILE).exists()


def test_held_sites_are_refused_by_name_and_the_file_reads_back(tmp_path):
    a, b = bert(0), bert(1)
    aligned = symdsl.align(a, b, out=tmp_path / "out")
    with pytest.raises(UsageError, match=r"cannot hold site\(s\) \['nope'\].*no such site"):
        hold_sites(aligned.resolved, ["nope"])
    frame = OutputFrame.load(tmp_path / "out")
    assert frame.moved == ["resid", "pool"] and set(frame.outputs) == {"last_hidden_state", "pooler_output"}
    assert json.loads(frame.metadata()["outputs"])["last_hidden_state"]["pattern"] == "_ _ resid"
    from symdsl.models import load_model

    loaded = load_model(str(tmp_path / "out")).double()
    assert worst(symdsl.undo_output_frame(outputs(loaded), tmp_path / "out"), outputs(b)) < 1e-10
    again = symdsl.apply(tmp_path / "out", b, out=tmp_path / "applied")        # apply writes it as align does
    assert again.output_frame.moved == ["resid", "pool"]
    assert worst(OutputFrame.load(tmp_path / "applied").undo(outputs(again.model)), outputs(b)) < 1e-10
    with pytest.raises(UsageError, match="no output transform at"):
        OutputFrame.load(tmp_path)
    with pytest.raises(UsageError, match="format 'symdsl-transform' is not a symdsl output transform"):
        OutputFrame.load(tmp_path / "out" / "transform.safetensors")


def test_the_command_prints_the_note_and_writes_the_file(tmp_path, capsys):
    for seed in (0, 1):
        save_model(bert(seed), tmp_path / f"m{seed}")
    args = ["align", str(tmp_path / "m0"), str(tmp_path / "m1")]
    assert main([*args, "-o", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "output frame: last_hidden_state comes out in A's frame" in out and "--keep-output-frame" in out
    assert f"transform.safetensors, {OUTPUT_TRANSFORM_FILE}" in out
    assert (tmp_path / "out" / OUTPUT_TRANSFORM_FILE).is_file()
    assert json.loads((tmp_path / "out" / "symdsl.json").read_text())["output_frame"]["moved_sites"] == ["resid", "pool"]
    assert main([*args, "-o", str(tmp_path / "kept"), "--keep-output-frame"]) == 0
    out = capsys.readouterr().out
    assert "output frame: B's output frame kept" in out and OUTPUT_TRANSFORM_FILE not in out
    assert not (tmp_path / "kept" / OUTPUT_TRANSFORM_FILE).exists()
