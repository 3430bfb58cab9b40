"""The command line: output, JSON reports and exit codes (0 ok, 1 failed check, 2 usage)."""
from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from symdsl.cli.main import main
from symdsl import __version__, find_spec


def test_check_a_shipped_spec_prints_every_site_and_exits_0(capsys):
    assert main(["check", "hf-gpt2"]) == 0
    out = capsys.readouterr().out
    assert "static check (export graph" in out and "ok: every op respects the declared sites" in out
    assert "canonicalize: relative error" in out and "ok; 9 sites" in out and "result: OK" in out
    for site in ("resid", "heads.1", "qk.0", "ov.1", "mlp.0", "all sites"):
        assert site in out


def test_check_json_report(capsys):
    assert main(["check", "timm-vit", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["spec"] == "timm-vit"
    assert report["static"]["ok"] is True and report["static"]["findings"] == []
    sites = report["numeric"]["sites"]
    assert {s["site"] for s in sites} >= {"resid", "mlp.1", "*"}
    assert all(s["relative_error"] < 1e-9 for s in sites)


def test_a_violated_symmetry_exits_1(tmp_path, capsys):
    text = Path(find_spec("hf-bert").file).read_text()
    broken = tmp_path / "bert-rotated.yaml"
    broken.write_text(text.replace("resid:      {group: permutation", "resid:      {group: orthogonal", 1))
    assert main(["check", str(broken)]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_an_invalid_spec_exits_1_and_names_file_line_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("symdsl: 1\nname: bad\nsites:\n  resid: {grup: orthogonal, size: 4}\n")
    assert main(["check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:4:" in err and "sites.resid.grup" in err and "did you mean 'group'" in err


def test_usage_errors_exit_2(tmp_path, capsys):
    assert main(["check", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["check", "hf-gtp2"]) == 2
    assert "did you mean 'hf-gpt2'" in capsys.readouterr().err


def test_check_a_saved_model_finds_its_spec(tmp_path, capsys):
    from symdsl.models import build_example

    build_example(find_spec("hf-gpt2")).save_pretrained(tmp_path / "gpt2")
    assert main(["check", "--model", str(tmp_path / "gpt2")]) == 0
    assert "spec hf-gpt2" in capsys.readouterr().out


def test_specs_and_schema(capsys):
    assert main(["specs", "--json"]) == 0
    names = [row["name"] for row in json.loads(capsys.readouterr().out)]
    assert names == ["hf-bert", "hf-clip", "hf-clip-text", "hf-clip-vision", "hf-distilbert", "hf-gemma",
                     "hf-gemma-backbone", "hf-gemma2", "hf-gemma2-backbone", "hf-gpt-neox", "hf-gpt-neox-backbone",
                     "hf-gpt2", "hf-gpt2-backbone", "hf-gpt2-circuits", "hf-gpt2-rmsnorm", "hf-gptj",
                     "hf-gptj-backbone", "hf-llama", "hf-llama-backbone", "hf-mixtral", "hf-mixtral-backbone",
                     "hf-opt", "hf-opt-backbone", "hf-opt-postln", "hf-opt-postln-backbone", "hf-phi3",
                     "hf-phi3-backbone", "hf-qwen2", "hf-qwen2-backbone", "hf-qwen3", "hf-qwen3-backbone",
                     "hf-roberta", "hf-t5", "hf-vit", "hf-vit-backbone", "timm-eva02", "timm-vit", "timm-vit-circuits",
                     "timm-vit-gap", "timm-vit-rmsnorm", "timm-vit-swiglu"]
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert {"sites", "tensors", "canonicalize", "heads"} <= set(schema["properties"])


def test_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "symdsl.cli.main", "specs"], capture_output=True, text=True)
    assert result.returncode == 0 and "hf-gpt2" in result.stdout


def test_packaging_lists_every_subpackage():
    import tomllib

    root = Path(__file__).resolve().parents[1]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.relative_to(root).parts[:-1]) for p in (root / "symdsl").rglob("__init__.py")}
    found |= {".".join(p.relative_to(root / "plugins").parts[:-1]) for p in (root / "plugins").rglob("__init__.py")}
    assert found <= listed, f"add to pyproject packages: {sorted(found - listed)}"


def test_version_names_symdsl_torch_and_python(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == (f"symdsl {__version__} (torch {torch.__version__}, "
                                               f"python {platform.python_version()})")
