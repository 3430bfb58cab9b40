"""The command line canonicalizes A and B in place (two copies less); the API leaves callers' models alone.

``symdsl.align(..., canonicalize_a_in_place=True)`` (what ``symdsl align`` passes: it never reads
A again) must give the very result of the copying path, leave A computing the same function in
canonical form, and never touch B; without it, both models come back bit for bit as they went in.
``canonicalize_b_in_place=True`` (also passed by ``symdsl align``) turns B itself into the aligned
B, keeping of the original only what restoring B's form reads, again bit for bit the copying
path's result, written output included.
"""
from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

import symdsl
from symdsl.api import pipeline
from symdsl.canon import RestoreContext
from symdsl.errors import BindError
from symdsl_builtins.canonicalizers import FoldLayerNorm
from symdsl.cli.main import main
from symdsl.models import load_model
from symdsl.models.build import perturb_parameters, quiet_transformers

from test_llama import CONFIG
from test_scale_shards import llama_folder

FAST = dict(verify=False, max_iter=2)


def llama(seed: int, tied: bool = False):
    """A tiny Llama with every parameter perturbed (norm gains away from 1, so folding them shows)."""
    import transformers

    torch.manual_seed(seed)
    with quiet_transformers():
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**CONFIG, "tie_word_embeddings": tied}))
    perturb_parameters(model, seed=seed, scale=0.3)
    if tied:
        model.tie_weights()
    return model.eval()


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def logits(model) -> torch.Tensor:
    ids = torch.randint(0, CONFIG["vocab_size"], (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("tied", [False, True])
def test_the_api_leaves_both_models_as_they_were(tied):
    a, b = llama(0, tied), llama(1, tied)
    before = [snapshot(a), snapshot(b)]
    symdsl.align(a, b, "hf-llama", **FAST)
    for model, state in zip((a, b), before):
        now = model.state_dict()
        assert now.keys() == state.keys()
        assert all(torch.equal(now[k], state[k]) for k in state), [k for k in state if not torch.equal(now[k], state[k])]
    assert (a.lm_head.weight is a.model.embed_tokens.weight) == tied      # a tie is not broken either


@pytest.mark.parametrize("tied", [False, True])
def test_canonicalizing_a_in_place_gives_the_copying_result(tied):
    a, b = llama(0, tied), llama(1, tied)
    b_before, a_logits = snapshot(b), logits(a)
    copied = symdsl.align(a, b, "hf-llama", **FAST)
    in_place = symdsl.align(a, b, "hf-llama", canonicalize_a_in_place=True, **FAST)
    assert in_place.result.objective == copied.result.objective
    assert all(torch.equal(in_place.result.elements[s], g) for s, g in copied.result.elements.items())
    assert all(torch.equal(in_place.aligned_b[k], v) for k, v in copied.aligned_b.items())
    assert in_place.prepared.models[0] is a                               # no copy of A was made
    gains = [p for n, p in a.named_parameters() if n.endswith("layernorm.weight")]
    assert gains and all(torch.equal(g, torch.ones_like(g)) for g in gains)   # folded: A is canonical now
    torch.testing.assert_close(logits(a), a_logits, rtol=1e-4, atol=1e-5)     # and computes what it did
    assert all(torch.equal(b.state_dict()[k], v) for k, v in b_before.items())   # B is never consumed


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("permutations_only", [False, True])
def test_b_in_place_becomes_the_aligned_b_of_the_copying_path(tied, permutations_only):
    """Rotations keep the gains folded; permutations restore them from the kept gains (and re-tie)."""
    options = dict(FAST, permutations_only=permutations_only)
    a, b = llama(0, tied), llama(1, tied)
    b_logits = logits(b)
    copied = symdsl.align(a, b, "hf-llama", **options)
    want, want_notes = {k: v.clone() for k, v in copied.model.state_dict().items()}, copied.notes
    want_meta = copied.transform_metadata(copied.transform)
    in_place = symdsl.align(a, b, "hf-llama", canonicalize_a_in_place=True, canonicalize_b_in_place=True, **options)
    assert in_place.prepared.models[1] is b and in_place.model is b          # no copy of B was made
    # of the original B only the folded gains (d,) are kept, not a model
    assert sorted(in_place.original_b) == sorted(n for n in want if n.endswith("norm.weight"))
    assert all(v.shape == (CONFIG["hidden_size"],) for v in in_place.original_b.values())
    assert all(torch.equal(in_place.result.elements[s], g) for s, g in copied.result.elements.items())
    got = b.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want), [k for k in want if not torch.equal(got[k], want[k])]
    assert in_place.notes == want_notes
    assert in_place.transform_metadata(in_place.transform) == want_meta       # the canonical digests too
    assert (b.lm_head.weight is b.model.embed_tokens.weight) == (tied and permutations_only)
    gains = [p for n, p in b.named_parameters() if n.endswith("layernorm.weight")]
    assert any(not torch.equal(g, torch.ones_like(g)) for g in gains) == permutations_only   # restored, or folded
    torch.testing.assert_close(logits(b), b_logits, rtol=1e-4, atol=1e-4)    # still B's function


def test_large_tensors_moved_in_slices_get_the_same_bits(monkeypatch):
    """Past CHUNK_BYTES a tensor is moved in slices along its vocabulary axis (what bounds the 1B
    embedding's float32 product); forced here on every tensor with a free axis, 16 rows a slice."""
    a, b = llama(0), llama(1)
    copied = symdsl.align(a, b, "hf-llama", **FAST)
    want = {k: v.clone() for k, v in copied.model.state_dict().items()}
    monkeypatch.setattr(pipeline, "CHUNK_BYTES", 1)
    monkeypatch.setattr(pipeline, "_MIN_ROWS", 16)
    sliced = []
    real = pipeline._move_in_chunks
    monkeypatch.setattr(pipeline, "_move_in_chunks", lambda *args: sliced.append(args[1]) or real(*args))
    symdsl.align(a, b, "hf-llama", canonicalize_b_in_place=True, **FAST)
    assert {"lm_head.weight", "model.embed_tokens.weight"} <= set(sliced)    # (64, 32): 4 slices each
    got = b.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want), [k for k in want if not torch.equal(got[k], want[k])]


def test_a_step_that_does_not_say_what_restoring_reads_keeps_b_whole(monkeypatch):
    """Fail closed: without restore_reads the whole B is copied as before and left untouched."""
    monkeypatch.setattr(FoldLayerNorm, "restore_reads", lambda self, args: None)
    a, b = llama(0), llama(1)
    before = snapshot(b)
    aligned = symdsl.align(a, b, "hf-llama", canonicalize_b_in_place=True, **FAST)
    assert aligned.original_b is b and aligned.model is not b
    assert all(torch.equal(b.state_dict()[k], v) for k, v in before.items())


def test_restoring_a_tensor_that_was_not_kept_names_it():
    context = RestoreContext({"model.norm.weight": torch.ones(4)}, {}, None)
    with pytest.raises(BindError, match="'model.layers.0.input_layernorm.weight'.*restore_reads"):
        context.original_tensor("model.layers.0.input_layernorm.weight")


@pytest.mark.parametrize("tied", [False, True])
def test_the_command_line_writes_what_the_api_writes(tmp_path, tied):
    """``symdsl align`` (A and B canonicalized in place, B moved in place) and the API (copies) write the
    same files: sharded bfloat16 inputs, every written tensor and the transform bit for bit."""
    llama_folder(tmp_path / "a", 0, tie_word_embeddings=tied)
    llama_folder(tmp_path / "b", 1, tie_word_embeddings=tied)
    assert main(["align", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(tmp_path / "cli"),
                 "--no-verify", "--option", "max_iter=2"]) == 0
    symdsl.align(load_model(str(tmp_path / "a")), load_model(str(tmp_path / "b")), "hf-llama",
                 out=tmp_path / "api", **FAST)
    files = sorted(p.name for p in (tmp_path / "api").glob("*.safetensors"))
    assert files == sorted(p.name for p in (tmp_path / "cli").glob("*.safetensors"))
    assert len(files) >= 4                          # the shards and transform.safetensors
    for name in files:
        with safe_open(str(tmp_path / "api" / name), "pt") as want, \
                safe_open(str(tmp_path / "cli" / name), "pt") as got:
            assert sorted(got.keys()) == sorted(want.keys()) and got.metadata() == want.metadata()
            for key in want.keys():
                tensor = got.get_tensor(key)
                assert tensor.dtype == (torch.bfloat16 if name.startswith("model") else want.get_tensor(key).dtype)
                assert torch.equal(tensor, want.get_tensor(key)), (name, key)     # transform.safetensors too
