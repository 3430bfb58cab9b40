"""Every output gets a model card: Hugging Face front matter and how the folder was made (issue 17)."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import torch
import yaml

import symdsl
from symdsl._version import __version__
from symdsl.cli.main import main
from symdsl.models.card import model_card
from symdsl.models.origin import Origin

from safety_models import gpt2_folder

MLP_SPEC = ('symdsl: 1\nname: mlp\nsites: {u: {group: permutation, size: 8}}\n'
            'example: {inputs: {input: {randn: true, shape: [4, 3]}}}\n'
            'tensors: {0.weight: "u _", 0.bias: u, 2.weight: "_ u\'"}\ninvariant: [2.bias]\n')


def card(folder: Path) -> tuple[dict, str]:
    """(front matter, body) of ``folder/README.md``, the front matter parsed with yaml."""
    text = (folder / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    _, front, body = text.split("---\n", 2)
    return yaml.safe_load(front), body


def test_an_align_card_names_its_inputs_method_options_and_exact_command(tmp_path, monkeypatch):
    a, b = gpt2_folder(tmp_path / "a: first", 0), gpt2_folder(tmp_path / "b 'second'", 1)   # YAML-hostile names
    monkeypatch.chdir(tmp_path)
    argv = ["align", a.name, b.name, "-o", "out", "--no-verify", "--option", "max_iter=2", "--permutations-only"]
    assert main(argv) == 0
    front, body = card(tmp_path / "out")
    assert front["base_model"] == ["a: first", "b 'second'"]          # as given on the command line
    assert front["library_name"] == "transformers"
    assert front["tags"][:2] == ["symdsl", "model-merging"] and "base_model_relation" not in front
    assert "| spec | hf-gpt2 |" in body and "| matcher | weight |" in body
    assert "max_iter=2" in body and "permutations_only=true" in body
    assert shlex.join(["symdsl", *argv]) in body and __version__ in body
    assert "not measured" in body                     # weight matching measures no barrier
    record = json.loads((tmp_path / "out" / "symdsl.json").read_text())
    assert record["command_line"] == shlex.join(["symdsl", *argv]) and record["options"]["max_iter"] == 2


def test_a_merge_card_says_merge_and_lists_every_model(tmp_path):
    models = [str(gpt2_folder(tmp_path / f"m{i}", i)) for i in range(2)]
    assert main(["merge", *models, "--weights", "0.7", "0.3", "-o", str(tmp_path / "out"), "--no-verify"]) == 0
    front, body = card(tmp_path / "out")
    assert front["base_model"] == models and front["base_model_relation"] == "merge"
    assert "merge" in front["tags"] and "pairwise matching" in body and "[0.7, 0.3]" in body


def test_the_card_is_written_inside_the_atomic_write_before_the_record(tmp_path, monkeypatch):
    import symdsl.api.alignment as alignment_module

    a, b = (symdsl.load_model(str(gpt2_folder(tmp_path / n, s))) for n, s in (("a", 0), ("b", 1)))
    seen = {}
    real = alignment_module.write_provenance

    def spy(stage, record):
        seen["stage"], seen["files"] = stage, sorted(p.name for p in stage.iterdir())
        real(stage, record)
    monkeypatch.setattr(alignment_module, "write_provenance", spy)
    symdsl.align(a, b, verify=False, max_iter=2).save(tmp_path / "out")
    assert seen["stage"] != tmp_path / "out" and "README.md" in seen["files"] and "symdsl.json" not in seen["files"]
    front, body = card(tmp_path / "out")
    assert front["base_model"] == [str(tmp_path / "a"), str(tmp_path / "b")]    # load_model's REFs
    assert "Python: symdsl.align" in body


class Mlp(torch.nn.Sequential):
    """A plain torch model (no transformers, no timm) that save_model can record and rebuild."""

    def __init__(self, hidden: int = 8):
        super().__init__(torch.nn.Linear(3, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 2))
        self.symdsl_config = {"hidden": hidden}


def test_a_plain_torch_merge_gets_a_card_without_a_library(tmp_path):
    nets = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        nets.append(Mlp())
    symdsl.merge(nets, symdsl.load_spec_text(MLP_SPEC), out=tmp_path / "out")
    front, body = card(tmp_path / "out")
    assert front == {"tags": ["symdsl", "model-merging", "merge"]}   # no inputs with a REF, no library
    assert "| spec | mlp |" in body and "Python: symdsl.merge" in body


def test_measured_barriers_appear_in_the_card():
    record = {"spec": "timm-vit", "matcher": "learned", "info": {"start_validation": 1.25, "best_validation": 0.01},
              "notes": ["resid stays canonical"]}
    _, body = model_card("align", record, Origin(("runs/a", "runs/b"), layout=1)).split("---\n", 2)[1:]
    assert "validation barrier 1.25 at the start, 0.01 after learning" in body and "resid stays canonical" in body
    surfaces = {"surfaces": {"universe + refinement": {"max_loss_gap": 0.37}}, "method": "universe"}
    assert "largest loss gap over the simplex 0.37" in model_card("merge", surfaces, Origin())
