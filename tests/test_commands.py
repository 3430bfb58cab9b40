"""train / align / merge / barrier from the command line, on two small ViTs trained on real digits."""
from __future__ import annotations

import json

import pytest
import torch

from symdsl.cli.main import main
from symdsl.data import load_dataset
from symdsl.models import load_model


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for seed in (0, 1):
        assert main(["train", "vit-digits", "--seed", str(seed), "--steps", "150", "-o", str(root / f"vit{seed}")]) == 0
    return root


def _logits(model, x):
    with torch.no_grad():
        return model(x)


def test_train_writes_a_loadable_checkpoint_with_its_record(pair):
    model = load_model(str(pair / "vit0"))
    assert type(model).__name__ == "VisionTransformer"
    record = json.loads((pair / "vit0" / "symdsl.json").read_text())
    assert record["command"] == "train" and record["test_accuracy"] > 0.5


def test_align_keeps_b_s_function_and_moves_it_toward_a(pair, capsys):
    out = pair / "aligned"
    assert main(["align", str(pair / "vit0"), str(pair / "vit1"), "-o", str(out)]) == 0
    assert "objective" in capsys.readouterr().out
    x = load_dataset("digits").test.inputs[:64]
    b, aligned, a = load_model(str(pair / "vit1")), load_model(str(out)), load_model(str(pair / "vit0"))
    torch.testing.assert_close(_logits(aligned, x), _logits(b, x), rtol=1e-4, atol=1e-4)   # same function
    distance = lambda m: sum(float((p - q).pow(2).sum()) for p, q in zip(m.state_dict().values(), a.state_dict().values()))
    assert distance(aligned) < distance(b)                                                     # closer weights
    record = json.loads((out / "symdsl.json").read_text())
    assert record["matcher"] == "weight" and record["objective"][-1] < record["objective"][0]
    assert (out / "transform.safetensors").exists()


def test_merge_writes_a_standard_model(pair):
    out = pair / "merged"
    assert main(["merge", str(pair / "vit0"), str(pair / "vit1"), "-o", str(out)]) == 0
    merged = load_model(str(out))
    assert type(merged).__name__ == "VisionTransformer"
    assert json.loads((out / "symdsl.json").read_text())["command"] == "merge"


def test_barrier_reports_vanilla_and_aligned_with_plot(pair, capsys):
    report, plot = pair / "barrier.json", pair / "barrier.png"
    assert main(["barrier", str(pair / "vit0"), str(pair / "vit1"), "--data", "digits", "--points", "5",
                 "--json", str(report), "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "vanilla" in out and "weight matching" in out
    curves = json.loads(report.read_text())["curves"]
    vanilla, aligned = curves["vanilla"]["barrier"]["loss"], curves["weight matching"]["barrier"]["loss"]
    assert aligned < vanilla
    assert plot.stat().st_size > 10_000
    # one convention: percentage points in the printed table, fractions in the JSON
    assert "acc barrier (pts)" in out
    row = next(line for line in out.splitlines() if line.startswith("vanilla"))
    assert float(row.split()[2]) == pytest.approx(100 * curves["vanilla"]["barrier"]["accuracy"], abs=0.051)


def test_barrier_needs_data(pair, capsys):
    with pytest.raises(SystemExit):
        main(["barrier", str(pair / "vit0"), str(pair / "vit1")])


def test_unknown_matcher_is_a_usage_error(pair, capsys):
    assert main(["align", str(pair / "vit0"), str(pair / "vit1"), "--matcher", "wieght", "-o", str(pair / "x")]) == 2
    assert "did you mean 'weight'" in capsys.readouterr().err


def test_timm_models_by_name_with_a_safetensors_checkpoint(tmp_path):
    import timm
    from safetensors.torch import save_file

    for seed in (0, 1):
        torch.manual_seed(seed)
        model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=7, img_size=32, depth=1)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / f"w{seed}.safetensors"))
    # the default img_size of vit_tiny is 224; sizes in the checkpoint must fit the named architecture
    from symdsl.errors import UsageError

    with pytest.raises(UsageError, match="does not fit timm model 'vit_tiny_patch16_224'"):
        load_model(f"timm:vit_tiny_patch16_224@{tmp_path / 'w0.safetensors'}")
    torch.manual_seed(0)
    full = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=7)
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(tmp_path / "full.safetensors"))
    loaded = load_model(f"timm:vit_tiny_patch16_224@{tmp_path / 'full.safetensors'}")
    assert loaded.head.weight.shape == (7, 192)
    from symdsl.models import save_model

    save_model(loaded, tmp_path / "saved")
    again = load_model(str(tmp_path / "saved"))
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(again.state_dict()[key], value)


def test_merge_of_three_models_uses_the_universe_with_refinement_and_plots_the_simplex(pair, capsys):
    assert main(["train", "vit-digits", "--seed", "2", "--steps", "150", "-o", str(pair / "vit2")]) == 0
    models = [str(pair / f"vit{i}") for i in range(3)]
    out, plot = pair / "merged3", pair / "simplex.png"
    assert main(["merge", *models, "--refine", "--data", "digits", "--plot", str(plot), "--option", "steps=20",
                 "--option", "eval_every=10", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "universe matching + refinement" in text and "max loss gap" in text
    record = json.loads((out / "symdsl.json").read_text())
    assert record["method"] == "universe + refinement" and record["refined"]["info"]["steps"] >= 10
    assert type(load_model(str(out))).__name__ == "VisionTransformer"
    assert plot.stat().st_size > 10_000 and plot.with_suffix(".json").exists()
    # refinement and the simplex evaluate the task loss: without data they are usage errors
    assert main(["merge", *models, "--refine", "-o", str(pair / "x")]) == 2
    assert "dataset" in capsys.readouterr().err
    assert main(["merge", *models[:2], "--plot", str(plot), "-o", str(pair / "x")]) == 2


def test_align_and_barrier_lift_a_narrower_b_into_a_s_space(pair, capsys):
    narrow = pair / "narrow"
    assert main(["train", "vit-digits", "--seed", "3", "--steps", "100", "--width", "32", "--heads", "2",
                 "-o", str(narrow)]) == 0
    out = pair / "narrow-aligned"
    assert main(["align", str(pair / "vit0"), str(narrow), "-o", str(out)]) == 0
    aligned, small = load_model(str(out)), load_model(str(narrow))
    assert aligned.cls_token.shape[-1] == 64                       # a standard model of A's configuration ...
    x = load_dataset("digits").test.inputs[:32]
    torch.testing.assert_close(_logits(aligned, x), _logits(small, x), rtol=1e-4, atol=1e-4)   # ... computing B
    assert "width_lift" in json.loads((out / "symdsl.json").read_text())
    report = pair / "narrow-barrier.json"
    assert main(["barrier", str(pair / "vit0"), str(narrow), "--data", "digits", "--points", "3",
                 "--json", str(report)]) == 0
    assert "width_lift" in json.loads(report.read_text())
    assert main(["merge", str(pair / "vit0"), str(narrow), "-o", str(pair / "narrow-merged")]) == 0
    assert load_model(str(pair / "narrow-merged")).cls_token.shape[-1] == 64
    # the wide model must be A: the result lives in A's space
    assert main(["align", str(narrow), str(pair / "vit0"), "-o", str(pair / "x")]) == 2
    assert "swap A and B" in capsys.readouterr().err


GPT2_TOKENIZER = __import__("pathlib").Path(__file__).parents[2] / "shared" / "data" / "gpt2_tokenizer"
SHAKESPEARE = GPT2_TOKENIZER.parent / "tinyshakespeare.txt"


@pytest.mark.skipif(not GPT2_TOKENIZER.is_dir(), reason="the shared GPT-2 tokenizer is not beside the repository")
def test_gpt2_bpe_training_and_evaluation_from_the_command_line(tmp_path, capsys):
    text = tmp_path / "shakespeare-head.txt"   # the first 30k characters: BPE-encoding the whole corpus takes seconds
    text.write_text(SHAKESPEARE.read_text()[:30_000])
    data = ["--data", f"text:{text}"]
    model = tmp_path / "bpe"
    assert main(["train", "gpt2-text", *data, "--tokenizer", str(GPT2_TOKENIZER), "--steps", "3", "--width", "32",
                 "--layers", "1", "--heads", "2", "-o", str(model)]) == 0
    assert load_model(str(model)).config.vocab_size == 50257
    report = tmp_path / "b.json"
    assert main(["barrier", str(model), str(model), *data, "--tokenizer", str(GPT2_TOKENIZER), "--points", "3",
                 "--max-batches", "1", "--json", str(report)]) == 0
    assert abs(json.loads(report.read_text())["curves"]["vanilla"]["barrier"]["loss"]) < 1e-5   # a model with itself
    # the character-level split would feed valid ids to the BPE model and be scored wrong: refused
    assert main(["barrier", str(model), str(model), *data, "--points", "3", "--max-batches", "1"]) == 2
    assert "--tokenizer" in capsys.readouterr().err


def test_max_chars_trains_and_evaluates_on_the_same_head_of_a_corpus(tmp_path, capsys):
    text = tmp_path / "corpus.txt"
    text.write_text("to be or not to be " * 200 + "XYZ" * 300)   # the tail holds characters the head lacks
    data = ["--data", f"text:{text}", "--max-chars", "3700"]
    model = tmp_path / "head"
    assert main(["train", "gpt2-text", *data, "--steps", "3", "--width", "16", "--layers", "1", "--heads", "2",
                 "-o", str(model)]) == 0
    assert load_model(str(model)).config.vocab_size == 7          # only the head's characters
    report = tmp_path / "b.json"
    assert main(["barrier", str(model), str(model), *data, "--points", "3", "--json", str(report)]) == 0
    assert json.loads(report.read_text())["curves"]["vanilla"]["barrier"]["loss"] == pytest.approx(0.0, abs=1e-6)
    # the whole corpus has 10 characters: evaluating the 7-token model on it is refused
    assert main(["barrier", str(model), str(model), "--data", f"text:{text}", "--points", "3"]) == 2
    assert main(["barrier", str(model), str(model), "--data", "digits", "--max-chars", "10"]) == 2
    assert "--max-chars applies to" in capsys.readouterr().err
