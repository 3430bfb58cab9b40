"""A plain nn.Module language model, named as module:factory with its own spec, gets align and
barrier results end to end with no hand-set attributes: evaluation calls it by its own argument,
its output records the factory, and a model symdsl cannot rebuild is refused before any work."""
from __future__ import annotations

import json

import pytest
import torch

import symdsl
from symdsl.cli.main import main
from symdsl.errors import UsageError

import custom_lm


@pytest.fixture
def spec_file(tmp_path):
    path = tmp_path / "custom-lm.yaml"
    path.write_text(custom_lm.SPEC)
    return path


def test_align_and_barrier_of_a_plain_module_work_from_the_command_line(spec_file, tmp_path, capsys):
    out = tmp_path / "aligned"
    assert main(["align", "custom_lm:seed0", "custom_lm:seed1", "--spec", str(spec_file), "-o", str(out)]) == 0
    record = json.loads((out / "symdsl_model.json").read_text())
    assert record == {"factory": "custom_lm:seed1", "config": {}}
    # the folder is loaded back by calling the recorded factory: code named in data, so only when trusted
    with pytest.raises(UsageError, match="--trust-code"):
        symdsl.load_model(str(out))
    aligned, b = symdsl.load_model(str(out), trust_code=True), custom_lm.seed1()
    tokens = torch.randint(0, custom_lm.VOCAB, (2, 8))
    assert torch.allclose(aligned(tokens), b(tokens), atol=1e-5)
    capsys.readouterr()
    report = tmp_path / "barrier.json"
    assert main(["barrier", "custom_lm:seed0", "custom_lm:seed1", "--spec", str(spec_file), "--data", "stdlib-text",
                 "--max-batches", "2", "--points", "3", "--json", str(report)]) == 0
    captured = capsys.readouterr()
    assert "internal error" not in captured.err
    curves = json.loads(report.read_text())
    assert curves and "weight matching" in captured.out


def test_a_module_symdsl_cannot_rebuild_is_refused_before_matching(spec_file, tmp_path):
    a, b = custom_lm.seed0(), custom_lm.seed1()          # built in Python: no factory, no config
    with pytest.raises(UsageError, match="cannot save a CustomLM: .*module:factory.*symdsl_config"):
        symdsl.align(a, b, str(spec_file), out=tmp_path / "out")
    assert not (tmp_path / "out").exists()
