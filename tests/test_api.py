"""The public Python API: a dozen names, B returned as B's class with B's function, the README's example."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import symdsl
from symdsl.models.build import perturb_parameters, quiet_transformers

README = Path(__file__).resolve().parents[1] / "README.md"


def gpt2(seed: int, tied: bool = True):
    import transformers

    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=16,
                                     bos_token_id=0, eos_token_id=0, tie_word_embeddings=tied)
    torch.manual_seed(seed)
    with quiet_transformers():
        model = transformers.GPT2LMHeadModel(config)
    perturbed = perturb_parameters(model, seed=seed).eval()
    if tied:
        perturbed.tie_weights()
    return perturbed


def relative_logit_error(model, reference, ids) -> float:
    with torch.no_grad():
        out, ref = model(ids).logits, reference(ids).logits
    return float((out - ref).abs().max() / ref.abs().max())


IDS = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))


def test_the_public_surface_is_small_and_documented():
    assert 10 <= len(symdsl.__all__) <= 20
    for name in ("align", "merge", "barrier", "check", "infer", "find_spec", "Alignment"):
        assert name in symdsl.__all__ and (getattr(symdsl, name).__doc__ or "").strip(), name
    assert callable(symdsl.check) and callable(symdsl.merge) and callable(symdsl.infer)   # not the subpackages
    assert ">>>" in symdsl.align.__doc__


def test_the_readme_example_runs_and_gives_b_back_as_b(tmp_path, monkeypatch):
    code = re.search(r"## In Python\n\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    assert len(code.strip().splitlines()) <= 6
    a, b = gpt2(0), gpt2(1)
    a.save_pretrained(tmp_path / "gpt2-seed0")
    b.save_pretrained(tmp_path / "gpt2-seed1")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    aligned = namespace["aligned"]
    assert type(aligned.model) is type(b)
    assert relative_logit_error(aligned.model, b, IDS) < 1e-5
    import transformers

    with quiet_transformers():
        saved = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "gpt2-seed1-aligned").eval()
    assert relative_logit_error(saved, b, IDS) < 1e-5
    assert (tmp_path / "gpt2-seed1-aligned" / "transform.safetensors").is_file()


def test_a_rotation_keeps_the_canonical_form_and_says_so():
    a, b = gpt2(0).double(), gpt2(1).double()
    aligned = symdsl.align(a, b)
    model = aligned.model
    assert relative_logit_error(model, b, IDS) < 1e-10
    assert model.lm_head.weight is not model.transformer.wte.weight and not model.config.tie_word_embeddings
    assert any("stay untied" in note for note in aligned.notes)
    assert any("stay folded" in note for note in aligned.notes)
    # loads strictly into a fresh model of B's class built from the model's own (untied) config
    fresh = type(b)(model.config).double().eval()
    fresh.load_state_dict(model.state_dict(), strict=True)
    assert relative_logit_error(fresh, b, IDS) < 1e-10


def test_permutations_give_b_its_own_parametrisation_back_tied():
    a, b = gpt2(0).double(), gpt2(1).double()
    aligned = symdsl.align(a, b, permutations_only=True)
    model = aligned.model
    assert relative_logit_error(model, b, IDS) < 1e-10
    assert model.lm_head.weight is model.transformer.wte.weight and model.config.tie_word_embeddings
    assert aligned.notes == ["untie: lm_head.weight, transformer.wte.weight tied again, as in B"]
    # LayerNorm gains are B's own, moved with the stream: not the folded 1s
    gains = sorted(model.transformer.ln_f.weight.tolist())
    assert gains == pytest.approx(sorted(b.transformer.ln_f.weight.tolist()), abs=1e-12)
    # and a tied model of B's class takes the state dict strictly
    fresh = type(b)(b.config).double().eval()
    fresh.load_state_dict(model.state_dict(), strict=True)
    assert relative_logit_error(fresh, b, IDS) < 1e-10


def test_the_transform_is_what_moves_canonical_b_onto_a():
    a, b = gpt2(0).double(), gpt2(1).double()
    aligned = symdsl.align(a, b, max_iter=5)
    assert set(aligned.transform) == set(aligned.resolved.sites)
    before = sum(float((aligned.prepared.states[1][n] - aligned.prepared.states[0][n]).pow(2).sum())
                 for n in aligned.resolved.tensors)
    after = sum(float((aligned.aligned_b[n] - aligned.prepared.states[0][n]).pow(2).sum())
                for n in aligned.resolved.tensors)
    assert after < before


def test_interpolate_runs_from_b_to_a():
    a, b = gpt2(0).double(), gpt2(1).double()
    aligned = symdsl.align(a, b, max_iter=2)
    assert relative_logit_error(aligned.interpolate(1.0), a, IDS) < 1e-10
    assert relative_logit_error(aligned.interpolate(0.0), b, IDS) < 1e-10


def test_library_errors_are_worded_for_library_users():
    a, b = gpt2(0), gpt2(1)
    with pytest.raises(symdsl.SymdslError, match="give it data") as info:
        symdsl.align(a, b, matcher="learned")
    assert "--" not in str(info.value).split("command line:")[0]
    with pytest.raises(symdsl.SymdslError, match="changes the architecture.*standard=False"):
        symdsl.align(a, b, spec="hf-gpt2-circuits")


def test_barrier_and_merge_through_the_api():
    from symdsl.data import load_dataset
    from symdsl.experiments.train import small_vit

    digits = load_dataset("digits")
    a, b = (small_vit(digits, embed_dim=16, depth=1, num_heads=2, seed=s) for s in (0, 1))
    report = symdsl.barrier(a, b, digits, points=3, max_batches=2, max_iter=2)
    assert set(report.curves) == {"vanilla", "weight matching"}
    assert report.barriers["vanilla"].loss == pytest.approx(
        max(l - (lam * report.curves["vanilla"].loss[-1] + (1 - lam) * report.curves["vanilla"].loss[0])
            for lam, l in zip(report.curves["vanilla"].lambdas, report.curves["vanilla"].loss)), abs=1e-9)
    merged = symdsl.merge([a, b], max_iter=2)
    assert type(merged.model) is type(a) and merged.record["method"] == "pairwise"


def test_the_api_document_s_examples_run():
    import doctest

    result = doctest.testfile(str(README.parent / "docs" / "api.md"), module_relative=False,
                              optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 20 and result.failed == 0


def test_a_spec_that_fails_its_check_is_refused_unless_told(tmp_path, monkeypatch):
    monkeypatch.setenv("SYMDSL_CACHE", str(tmp_path / "cache"))
    a, b = gpt2(0), gpt2(1)
    good = symdsl.find_spec("hf-gpt2")
    text = Path(good.file).read_text()
    wrong_text = text.replace("heads.${i} qk.${i}' | heads.${i} ov.${i}]\"", "heads.${i} qk.${i} | heads.${i} ov.${i}]\"")
    assert wrong_text != text                                   # keys bound primal: not a symmetry
    wrong = symdsl.load_spec_text(wrong_text, "wrong.yaml")
    with pytest.raises(symdsl.SymdslError, match=r"fails the (static|numeric) check.*--no-verify"):
        symdsl.align(a, b, wrong, max_iter=1)
    assert not list((tmp_path / "cache" / "checks").glob("*.json"))          # a failure is never cached
    symdsl.align(a, b, wrong, max_iter=1, verify=False)                        # told to: it runs
    from symdsl.api.verify import verify_spec

    registries = symdsl.plugins.default_registries()
    assert verify_spec(good, a, registries) == "checked"
    assert verify_spec(good, b, registries) == "cached"                       # same architecture: seconds once
    assert len(list((tmp_path / "cache" / "checks").glob("*.json"))) == 1
