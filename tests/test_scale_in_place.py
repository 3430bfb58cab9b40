"""The command line canonicalizes A in place (one copy less); the API leaves callers' models alone.

``symdsl.align(..., canonicalize_a_in_place=True)`` (what ``symdsl align`` passes: it never reads
A again) must give the very result of the copying path, leave A computing the same function in
canonical form, and never touch B; without it, both models come back bit for bit as they went in.
"""
from __future__ import annotations

import pytest
import torch

import symdsl
from symdsl.cli.main import main
from symdsl.models import load_model
from symdsl.models.build import perturb_parameters, quiet_transformers

from test_llama import CONFIG

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


def test_the_command_line_writes_what_the_api_writes(tmp_path):
    """``symdsl align`` (A canonicalized in place) and the API (copies) save the same aligned B."""
    with quiet_transformers():
        llama(0).save_pretrained(tmp_path / "a")
        llama(1).save_pretrained(tmp_path / "b")
    assert main(["align", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(tmp_path / "cli"),
                 "--no-verify", "--option", "max_iter=2"]) == 0
    api = symdsl.align(load_model(str(tmp_path / "a")), load_model(str(tmp_path / "b")), "hf-llama", **FAST)
    written = load_model(str(tmp_path / "cli")).state_dict()
    want = api.model.state_dict()
    assert written.keys() == want.keys()
    assert all(torch.equal(written[k], want[k]) for k in want), [k for k in want if not torch.equal(written[k], want[k])]
