"""`symdsl run`: recipe files describe align/merge/barrier/apply runs with the command line's own
settings, validated with located errors; an output's symdsl.json is a recipe that reproduces it."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from symdsl.cli.main import main

from safety_models import gpt2_folder


@pytest.fixture
def pair(tmp_path):
    return gpt2_folder(tmp_path / "a", 0), gpt2_folder(tmp_path / "b", 1)


def _same_weights(x, y) -> bool:
    first, second = load_file(str(x / "model.safetensors")), load_file(str(y / "model.safetensors"))
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_a_recipe_runs_align_and_merge_as_the_command_line_would(pair, tmp_path, capsys):
    a, b = pair
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"""recipe: 1
runs:
  - align:
      a: {a}
      b: {b}
      options: {{max_iter: 3}}
      output: {tmp_path / 'aligned'}
  - merge: {{models: [{a}, {b}], output: {tmp_path / 'merged'}, verify: false}}
""")
    assert main(["run", str(recipe)]) == 0
    assert main(["align", str(a), str(b), "--option", "max_iter=3", "-o", str(tmp_path / "by-hand")]) == 0
    assert _same_weights(tmp_path / "aligned", tmp_path / "by-hand")
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    record = json.loads((tmp_path / "aligned" / "symdsl.json").read_text())
    assert "--option max_iter=3" in record["command_line"]


def test_an_output_s_symdsl_json_reproduces_it(pair, tmp_path):
    a, b = pair
    assert main(["align", str(a), str(b), "-o", str(tmp_path / "first")]) == 0
    assert main(["run", str(tmp_path / "first" / "symdsl.json"), "-o", str(tmp_path / "second")]) == 0
    assert _same_weights(tmp_path / "first", tmp_path / "second")
    second = json.loads((tmp_path / "second" / "symdsl.json").read_text())
    assert second["spec"] == "hf-gpt2" and str(tmp_path / "second") in second["command_line"]


@pytest.mark.parametrize("text, located, message", [
    ("recipe: 2\nruns: [{align: {a: A, b: B, output: O}}]\n", "recipe.yaml:1:", "recipe version must be the integer 1"),
    ("recipe: 1\nruns:\n  - align: {a: A, b: B, outptu: O}\n", "recipe.yaml:3:", "'align' has no setting 'outptu'"),
    ("recipe: 1\nruns:\n  - align: {a: A, b: B, output: O, seed: many}\n", "recipe.yaml:3:", "'many' is not a valid int"),
    ("recipe: 1\nruns:\n  - align: {a: A, b: B, output: O, dtype: int8}\n", "recipe.yaml:3:", "is not one of"),
    ("recipe: 1\nruns:\n  - align: {a: A, output: O}\n", "recipe.yaml:3:", "'align' needs 'b'"),
    ("recipe: 1\nruns:\n  - allign: {a: A, b: B}\n", "recipe.yaml:3:", "unknown command 'allign'"),
    ("recipe: 1\nruns:\n  - align: {a: A, b: B, output: O, overwrite: yes please}\n", "recipe.yaml:3:",
     "expected true or false"),
])
def test_a_bad_recipe_is_refused_at_its_line_before_any_run(tmp_path, capsys, text, located, message):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    assert main(["run", str(recipe)]) != 0
    err = capsys.readouterr().err
    assert located in err and message in err and "internal error" not in err


def test_output_override_needs_a_single_run(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("recipe: 1\nruns:\n  - align: {a: A, b: B, output: O1}\n  - align: {a: A, b: B, output: O2}\n")
    assert main(["run", str(recipe), "-o", str(tmp_path / "x")]) == 2
    assert "-o names the output of a recipe of one run" in capsys.readouterr().err
