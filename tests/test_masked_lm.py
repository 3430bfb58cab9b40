"""The masked_language_model task: BERT's 80/10/10 masking, fixed test masks, dynamic train masks, the
loss and accuracy over masked positions only, small_roberta on it, and learned matching + barrier."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import symdsl
from conftest import REGISTRIES, relative_distance
from symdsl.act import act_state_dict, random_transform
from symdsl.canon import canonicalize
from symdsl.check.numeric import numeric_check
from symdsl.data import IGNORE_INDEX, load_dataset, masked_text_dataset
from symdsl.data.holdout import with_validation
from symdsl.data.masked import MASK_ID, PAD_ID, mask_tokens
from symdsl.errors import UsageError
from symdsl.evaluate import barrier, evaluate, loss_curve
from symdsl.evaluate.baselines import unigram_loss
from symdsl.evaluate.forward import batch_loss
from symdsl.experiments.train import small_roberta, train
from symdsl.models.build import perturb_parameters
from symdsl.spec import resolve

TEXT = "First Citizen: Before we proceed any further, hear me speak.\nAll: Speak, speak.\n" * 12


@pytest.fixture(scope="module")
def data():
    return masked_text_dataset(TEXT, block_size=16)


def test_masking_chooses_fifteen_percent_and_splits_them_80_10_10():
    ids = torch.randint(2, 40, (64, 512), generator=torch.Generator().manual_seed(1))
    inputs, targets = mask_tokens(ids, torch.Generator().manual_seed(2), random_range=(2, 40))
    chosen = targets != IGNORE_INDEX
    n = int(chosen.sum())                                  # about 0.15 * 32768 = 4915
    assert abs(n / ids.numel() - 0.15) < 0.01
    assert torch.equal(targets[chosen], ids[chosen])       # targets: the original ids, only where chosen
    assert torch.equal(inputs[~chosen], ids[~chosen])      # unchosen positions are never touched
    masked = inputs[chosen] == MASK_ID
    kept = inputs[chosen] == ids[chosen]
    swapped = ~masked & ~kept                              # replaced by another character
    assert abs(float(masked.float().mean()) - 0.8) < 0.03
    # a random replacement equals the original 1 time in 38: "kept" is 10 % plus that share of 10 %
    assert abs(float(kept.float().mean()) - (0.1 + 0.1 / 38)) < 0.02
    assert abs(float(swapped.float().mean()) - 0.1 * 37 / 38) < 0.02
    assert int(inputs[chosen][swapped].min()) >= 2         # never a special token (<mask> 0, <pad> 1)
    assert not bool((inputs == PAD_ID).any())


def test_the_test_masks_are_fixed_and_train_batches_are_re_masked_per_pass(data):
    again = masked_text_dataset(TEXT, block_size=16)
    first, second = next(data.batches("test", 4)), next(data.batches("test", 4))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert all(torch.equal(a, b) for a, b in zip(first, next(again.batches("test", 4))))   # the same seeded problem
    other = masked_text_dataset(TEXT, block_size=16, mask_seed=5)
    assert not torch.equal(first[1], next(other.batches("test", 4))[1])
    # shuffled train passes (one seed per pass): the same seed the same batch, another seed other masks
    a, b = (next(data.batches("train", 8, shuffle=True, seed=s)) for s in (1, 1))
    c = next(data.batches("train", 8, shuffle=True, seed=2))
    assert torch.equal(a[0], b[0]) and not torch.equal(a[1], c[1])
    fixed = masked_text_dataset(TEXT, block_size=16, dynamic=False)
    x, y = next(fixed.batches("train", 8, shuffle=True, seed=3))   # rows of the pre-masked train blocks
    rows = {tuple(r) for r in fixed.train.targets.tolist()}
    assert all(tuple(r) in rows for r in y.tolist())


def test_the_loss_and_accuracy_are_over_the_masked_positions_only():
    class Table(torch.nn.Module):
        """Logits are a fixed table indexed by the input id: (B, T) -> (B, T, V)."""

        def __init__(self, vocab):
            super().__init__()
            self.table = torch.nn.Parameter(torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(0)))

        def forward(self, input_ids):
            return self.table[input_ids]

    tiny = masked_text_dataset("abcdab" * 40, block_size=6, mask_fraction=0.5)
    model = Table(tiny.vocab_size)
    inputs = torch.tensor([[0, 3, 4, 0, 2, 3]])
    targets = torch.tensor([[2, -100, -100, 5, -100, -100]])
    logits = model.table[inputs[0]]                                           # (T, V)
    by_hand = -(logits[0].log_softmax(-1)[2] + logits[3].log_softmax(-1)[5]) / 2
    assert float(batch_loss(model, tiny.task, inputs, targets).detach()) == pytest.approx(float(by_hand.detach()), rel=1e-6)
    # evaluate: the exact mean over every masked position of the split, and the argmax accuracy there
    result = evaluate(model, tiny, "test", batch_size=3)
    x, y = tiny.test.inputs, tiny.test.targets
    scored = y != IGNORE_INDEX
    out = model.table[x].detach()
    assert result["loss"] == pytest.approx(float(F.cross_entropy(out[scored], y[scored])), rel=1e-6)
    assert result["accuracy"] == pytest.approx(float((out[scored].argmax(-1) == y[scored]).float().mean()))
    # the unigram baseline counts masked positions only
    assert 0 < unigram_loss(tiny) < float(torch.log(torch.tensor(4.0))) + 0.1


def test_mlm_path_is_a_registered_dataset_with_clear_errors(tmp_path):
    path = tmp_path / "play.txt"
    path.write_text(TEXT)
    ds = load_dataset(f"mlm:{path}", block_size=16, max_chars=500)
    assert ds.task == "masked_language_model" and ds.name == "mlm:play.txt" and ds.info["chars"] == 500
    assert ds.tokenizer.decode(ds.test.stream[:3]) == TEXT[450:453]
    with pytest.raises(UsageError, match="mask_fraction must be between 0 and 1"):
        load_dataset(f"mlm:{path}", mask_fraction=1.5)
    with pytest.raises(UsageError, match="has no option 'mask_fracton'.*mask_fraction"):
        load_dataset(f"mlm:{path}", mask_fracton=0.2)
    with pytest.raises(UsageError, match="does not exist"):
        load_dataset(f"mlm:{tmp_path / 'missing.txt'}")
    with pytest.raises(UsageError, match="needs an argument: 'mlm:PATH'"):
        load_dataset("mlm")


def test_a_validation_split_of_a_masked_dataset_keeps_its_masks_fixed(data):
    fit = with_validation(data, 0.2)
    assert fit.task == "masked_language_model" and isinstance(fit, type(data))
    x, y = fit.test.inputs, fit.test.targets
    assert x.shape[1] == 16 and bool((y != IGNORE_INDEX).any())
    chosen = y != IGNORE_INDEX
    assert torch.equal(x[~chosen], fit.test.stream[: x.numel()].view_as(x)[~chosen])   # not shifted: an encoder


def test_small_roberta_reads_a_block_and_its_symmetries_hold(data):
    model = perturb_parameters(small_roberta(data, hidden_size=32, intermediate_size=64, seed=0)).eval()
    assert model.config.max_position_embeddings == data.block_size + 2 and model.config.pad_token_id == PAD_ID
    report = numeric_check(symdsl.find_spec("hf-roberta"), model, registries=REGISTRIES)
    assert report.ok, report.failed
    assert max(s.relative_error for s in report.sites) < 1e-6
    # weight matching finds a hidden group element of the trained-for-MLM layout again
    double = model.double()
    resolved = resolve(symdsl.find_spec("hf-roberta"), double, registries=REGISTRIES)
    canonicalize(double, resolved)
    a = {k: v.clone() for k, v in double.state_dict().items()}
    b = act_state_dict(resolved, a, random_transform(resolved, seed=3))
    assert relative_distance(resolved, b, a) > 0.5
    result = REGISTRIES.matchers["weight"].match(resolved, a, b)
    assert relative_distance(resolved, act_state_dict(resolved, b, result.elements), a) < 1e-6
    with pytest.raises(UsageError, match="needs a masked-language-model dataset"):
        small_roberta(load_dataset("digits"))


def test_training_learned_matching_and_the_barrier_run_on_the_masked_task(data):
    from symdsl.api.pipeline import match, prepare

    models = [small_roberta(data, hidden_size=16, intermediate_size=32, num_attention_heads=2, seed=s)
              for s in (0, 1)]
    for seed, model in enumerate(models):
        metrics = train(model, data, steps=30, batch_size=16, lr=3e-3, seed=seed, threads=1)
        assert metrics["test_loss"] < metrics["first_loss"]
    prepared = prepare(models, symdsl.find_spec("hf-roberta"))
    result = match(prepared, 1, "learned", data=data, steps=4, eval_every=2, batch_size=8)
    assert result.info["steps"] >= 2 and result.info["best_validation"] <= result.info["start_validation"]
    aligned = act_state_dict(prepared.resolved, prepared.states[1], result.elements)
    curve = loss_curve(prepared.models[0], prepared.states[0], aligned, data, points=3)
    ends = [evaluate(m, data)["loss"] for m in models]
    assert curve.loss[2] == pytest.approx(ends[0], rel=1e-5)   # lam = 1 is model 0 on the fixed test masks
    assert curve.loss[0] == pytest.approx(ends[1], rel=1e-4)   # lam = 0 is model 1, moved by a symmetry
    assert barrier(curve).loss >= 0.0


def test_the_command_line_trains_a_roberta_and_scores_its_barrier_on_the_masked_task(tmp_path, capsys):
    import json

    from symdsl.cli.main import main
    from symdsl.models import load_model

    text = tmp_path / "play.txt"
    text.write_text(TEXT * 8)
    data = ["--data", f"mlm:{text}", "--max-chars", "5000"]   # 70 train blocks of 64: one batch of the recipe
    small = ["--steps", "3", "--width", "16", "--layers", "1", "--heads", "2"]
    for seed in (0, 1):
        assert main(["train", "roberta-mlm", *data, *small, "--seed", str(seed), "-o", str(tmp_path / f"r{seed}")]) == 0
    model = load_model(str(tmp_path / "r0"))
    assert type(model).__name__ == "RobertaForMaskedLM" and model.config.max_position_embeddings == 66
    report = tmp_path / "b.json"
    assert main(["barrier", str(tmp_path / "r0"), str(tmp_path / "r1"), *data, "--points", "3",
                 "--json", str(report)]) == 0
    assert json.loads(report.read_text())["curves"]["vanilla"]["barrier"]["loss"] >= 0.0
    assert main(["train", "roberta-mlm", "--data", f"text:{text}", *small, "-o", str(tmp_path / "x")]) == 2
    assert "give --data mlm:PATH" in capsys.readouterr().err
