"""No code runs from data unless the user opts in with --trust-code (issue 16).

The two reproductions: a model folder whose symdsl_model.json names ``subprocess:getoutput``,
and a spec whose ``example.factory`` does. Both must exit non-zero, name --trust-code, and
create no file.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import symdsl
from symdsl.cli.main import main
from symdsl.errors import UsageError
from symdsl.models import load_model, save_model

from safety_models import gpt2_folder

PAYLOAD = {"class": "subprocess:getoutput", "config": {"cmd": "touch PWNED"}}
SPEC = """symdsl: 1
name: evil
example:
  factory: {factory}
  config: {config}
  inputs:
    input: {{randn: true, shape: [2, 3]}}
sites: {{u: {{group: permutation, size: 8}}}}
tensors: {{0.weight: "u _", 0.bias: u, 2.weight: "_ u'"}}
invariant: [2.bias]
"""


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)       # a payload that ran would leave PWNED here
    return tmp_path


def planted_folder(tmp_path: Path) -> Path:
    """A symdsl model folder (valid weights) whose record names a function that runs a command."""
    import torch

    net = torch.nn.Linear(3, 8)
    net.symdsl_config = {"in_features": 3, "out_features": 8}
    folder = save_model(net, tmp_path / "planted")
    (folder / "symdsl_model.json").write_text(json.dumps(PAYLOAD))
    return folder


@pytest.mark.parametrize("command", ["check", "align", "merge", "barrier"])
def test_a_model_record_naming_a_function_runs_nothing(in_tmp, command, capsys):
    folder = planted_folder(in_tmp)
    argv = {"check": ["check", "--model", str(folder)],
            "align": ["align", str(folder), str(folder), "-o", str(in_tmp / "out")],
            "merge": ["merge", str(folder), str(folder), "-o", str(in_tmp / "out")],
            "barrier": ["barrier", str(folder), str(folder), "--data", "digits"]}[command]
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert "--trust-code" in err and "subprocess:getoutput" in err and "symdsl_model.json" in err
    assert not (in_tmp / "PWNED").exists() and not (in_tmp / "out").exists()


def test_a_record_planted_in_a_save_pretrained_folder_is_refused(in_tmp, capsys):
    folder = gpt2_folder(in_tmp / "gpt2")
    (folder / "symdsl_model.json").write_text(json.dumps(PAYLOAD))
    assert main(["check", "--model", str(folder)]) == 2
    assert "both config.json" in capsys.readouterr().err
    assert not (in_tmp / "PWNED").exists()


def test_a_record_may_name_a_library_model_class_without_trust(in_tmp):
    import torch

    net = torch.nn.Linear(3, 8)
    net.symdsl_config = {"in_features": 3, "out_features": 8}
    assert type(load_model(str(save_model(net, in_tmp / "linear")))).__name__ == "Linear"


def test_a_record_naming_a_local_class_needs_trust_code(in_tmp, monkeypatch):
    (in_tmp / "mynets.py").write_text("import torch\n\nclass Net(torch.nn.Linear):\n    pass\n")
    monkeypatch.syspath_prepend(str(in_tmp))
    import mynets

    net = mynets.Net(3, 8)
    net.symdsl_config = {"in_features": 3, "out_features": 8}
    folder = save_model(net, in_tmp / "net")
    with pytest.raises(UsageError, match="--trust-code"):
        load_model(str(folder))
    assert type(load_model(str(folder), trust_code=True)).__name__ == "Net"


def test_a_spec_factory_runs_nothing_without_trust_code(in_tmp, capsys):
    spec = in_tmp / "evil.yaml"
    spec.write_text(SPEC.format(factory="subprocess:getoutput", config='{cmd: "touch PWNED"}'))
    assert main(["check", str(spec)]) != 0
    err = capsys.readouterr().err
    assert "--trust-code" in err and f"{spec}:4:" in err and "example.factory" in err
    assert not (in_tmp / "PWNED").exists()
    with pytest.raises(UsageError, match="trust_code=True"):
        symdsl.check(str(spec))
    assert not (in_tmp / "PWNED").exists()


def test_nothing_is_imported_from_the_spec_folder_without_trust_code(in_tmp, capsys):
    folder = in_tmp / "specs"
    folder.mkdir()
    (folder / "evilmod.py").write_text("open('PWNED', 'w').close()\nimport torch\n"
                                       "def mlp():\n    return torch.nn.Sequential(torch.nn.Linear(3, 8), "
                                       "torch.nn.ReLU(), torch.nn.Linear(8, 2))\n")
    spec = folder / "mlp.yaml"
    spec.write_text(SPEC.format(factory="evilmod:mlp", config="{}"))
    assert main(["check", str(spec)]) != 0
    assert "--trust-code" in capsys.readouterr().err and not (in_tmp / "PWNED").exists()
    # the opt-in does what it says: the module beside the spec is imported and the check runs
    assert main(["check", str(spec), "--trust-code"]) == 0
    assert (in_tmp / "PWNED").exists()


def test_specs_of_installed_plugins_need_no_opt_in():
    assert symdsl.check("hf-gpt2", static=False).ok
