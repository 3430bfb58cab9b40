"""Outputs never destroy inputs and never look complete before they are (issue 16, safe outputs).

The output folder is validated before any model is loaded; everything is staged beside it and
moved into place at the end, with the file that makes it load as a model renamed last.
"""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import symdsl
from symdsl.cli import align_cmd
from symdsl.cli.main import main
from symdsl.errors import UsageError
from symdsl.models import load_model
from symdsl.models.output import check_output, hide_records, staged_output

from safety_models import gpt2_folder, tree

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def pair(tmp_path):
    return gpt2_folder(tmp_path / "a", 0), gpt2_folder(tmp_path / "b", 1)


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if the command loads a model: refusals must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the output was validated")
    monkeypatch.setattr(align_cmd, "load_model", refuse)


@pytest.mark.parametrize("where", ["a", "a/sub", "."])
def test_an_output_that_is_inside_or_holds_an_input_is_refused_before_loading(pair, where, no_loading, capsys):
    a, b = pair
    before = tree(a)
    out = a.parent if where == "." else a.parent / where
    assert main(["align", str(a), str(b), "-o", str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "input" in err and "somewhere else" in err and "internal error" not in err
    assert tree(a) == before


def test_merge_into_an_input_is_refused(pair, no_loading, capsys):
    a, b = pair
    assert main(["merge", str(a), str(b), "-o", str(b)]) == 2
    assert f"output folder '{b}' is the input '{b}'" in capsys.readouterr().err


def test_a_non_empty_folder_needs_overwrite(pair, tmp_path, no_loading, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "symdsl_model.json").write_text("{}")        # stale record of an earlier run
    assert main(["align", *map(str, pair), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "exists and is not empty" in err and "--overwrite" in err
    assert (out / "symdsl_model.json").read_text() == "{}"


@pytest.mark.parametrize("case", ["file", "under-file"])
def test_a_file_or_a_path_under_a_file_is_refused(pair, tmp_path, case, no_loading, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    out = blocker if case == "file" else blocker / "out"
    assert main(["align", *map(str, pair), "-o", str(out)]) == 2
    assert "file" in capsys.readouterr().err


def test_an_unwritable_place_is_refused_before_any_work(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root may write anywhere; a read-only mount is not available here")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(UsageError, match="cannot write output folder"):
            check_output(locked / "out")
    finally:
        locked.chmod(0o700)


def test_an_unwritable_place_is_refused_with_the_reason(tmp_path, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr("symdsl.models.output.tempfile.mkdtemp", denied)
    with pytest.raises(UsageError, match="cannot write output folder .*Permission denied"):
        check_output(tmp_path / "out")


def test_overwrite_replaces_the_folder_and_the_result_loads(pair, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "symdsl_model.json").write_text("{}")
    assert main(["align", *map(str, pair), "-o", str(out), "--overwrite", "--no-verify"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "generation_config.json",
                                                      "model.safetensors", "symdsl.json", "transform.safetensors"]
    assert type(load_model(str(out))).__name__ == "GPT2LMHeadModel"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]     # no staging folder left


def test_the_api_refuses_an_input_as_out_before_matching(pair, monkeypatch):
    a, b = (load_model(str(p)) for p in pair)
    for module in ("symdsl.api.align", "symdsl.api.merge"):     # the modules (the package binds the functions)
        monkeypatch.setattr(importlib.import_module(module), "spec_for", lambda *x, **k: pytest.fail("work started"))
    with pytest.raises(UsageError, match="is the input"):
        symdsl.align(a, b, out=pair[0])
    with pytest.raises(UsageError, match="is the input"):
        symdsl.merge([a, b], out=pair[1])


def test_a_failed_write_leaves_no_folder(pair, tmp_path, monkeypatch):
    a, b = (load_model(str(p)) for p in pair)
    alignment = symdsl.align(a, b, verify=False)

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr("safetensors.torch.save_file", broken)    # the transform, after the model
    with pytest.raises(OSError):
        alignment.save(tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]        # no output, no staging folder


KILLED = textwrap.dedent("""
    import os, sys
    import torch
    torch.set_num_threads(1)           # tiny tensors; the test workers share two cores
    import symdsl
    from symdsl.models import load_model
    import symdsl.api.alignment as alignment

    def die(*args, **kwargs):          # kill -9 right before symdsl.json: everything else is written
        os._exit(9)
    alignment.write_provenance = die
    a, b = load_model(sys.argv[1]), load_model(sys.argv[2])
    symdsl.align(a, b, verify=False).save(sys.argv[3])
""")


def test_a_run_killed_before_the_end_leaves_nothing_that_loads(pair, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", KILLED, *map(str, pair), str(out)], capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=300)
    assert run.returncode == 9, run.stderr
    assert not out.exists()
    staged = [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    assert len(staged) == 1 and (staged[0] / "model.safetensors").exists()      # the weights were written ...
    assert not (staged[0] / "config.json").exists()                              # ... but the record is held back
    import transformers
    with pytest.raises(Exception):       # no config: transformers refuses (the error type varies by version)
        transformers.GPT2LMHeadModel.from_pretrained(str(staged[0]))
    with pytest.raises(UsageError, match="interrupted symdsl run"):
        load_model(str(staged[0]))


def test_a_kill_between_the_folder_rename_and_the_commit_leaves_a_folder_that_does_not_load(tmp_path, monkeypatch):
    out = tmp_path / "out"
    renames = []
    real = os.replace

    def replace(src, dst):
        renames.append(dst)
        if len(renames) == 3:           # hide the record, move the folder, then (killed) the commit
            raise SystemExit(9)
        real(src, dst)
    monkeypatch.setattr("symdsl.models.output.os.replace", replace)
    with pytest.raises(SystemExit):
        with staged_output(out) as stage:
            gpt2_folder(stage)
            hide_records(stage)
    assert out.exists() and not (out / "config.json").exists() and (out / "config.json.partial").exists()
    with pytest.raises(UsageError, match="interrupted symdsl run"):
        load_model(str(out))


def test_train_refuses_a_non_empty_output_before_training(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["train", "vit-digits", "--steps", "1", "-o", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"


def test_report_files_never_overwrite_an_input(pair, capsys):
    a, b = pair
    weights = a / "model.safetensors"
    before = weights.read_bytes()
    assert main(["barrier", str(a), str(b), "--data", "digits", "--json", str(weights)]) == 2
    assert "--json" in capsys.readouterr().err
    assert main(["infer", "--model", str(a), "-o", str(a / "config.json")]) == 2
    assert "would overwrite a file of the input" in capsys.readouterr().err
    assert weights.read_bytes() == before
