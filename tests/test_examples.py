"""The worked example of docs/spec-language.md: examples/tiny-transformer.yaml on examples/tiny_transformer.py.

The spec's ``example.factory`` is ``examples.tiny_transformer:tiny_transformer``, importable when the
repository root is on ``sys.path`` (``PYTHONPATH=.`` on the command line); the fixture arranges that.
A spec file's factory runs only with ``--trust-code``.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from symdsl.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "examples" / "tiny-transformer.yaml"

# the two key lines of the spec; a copy with both made primal ("q and k both primal") must fail
KEY_WEIGHT = "blocks.${i}.attn.k.weight: \"(heads.${i} qk.${i}') resid'\""
KEY_BIAS = "blocks.${i}.attn.k.bias: \"(heads.${i} qk.${i}')\""
# one row of the numeric check's table: "  qk.0   invertible   5.41e-02   6.49e-02  FAILED"
ROW = re.compile(r"^\s+(all sites|\S+)\s+(permutation|semi_permutation|orthogonal|stiefel|invertible|all)"
                 r"\s+\S+\s+\S+\s+(ok|FAILED)$", re.MULTILINE)


def site_results(out: str) -> dict[str, str]:
    """site -> 'ok' or 'FAILED', from the numeric check's text report."""
    return {site: verdict for site, _, verdict in ROW.findall(out)}


@pytest.fixture
def repo_root(monkeypatch):
    """Run from the repository root with it on sys.path, as the docs tell users to."""
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(ROOT))
    return ROOT


def test_example_spec_passes_the_numeric_check(repo_root, capsys):
    assert main(["check", "examples/tiny-transformer.yaml", "--trust-code"]) == 0
    out = capsys.readouterr().out
    assert "spec tiny-transformer (examples/tiny-transformer.yaml)" in out
    assert "result: OK" in out
    assert site_results(out) == dict.fromkeys(
        ["resid", "heads.0", "heads.1", "qk.0", "qk.1", "ov.0", "ov.1", "mlp.0", "mlp.1", "all sites"], "ok")


def test_keys_written_primal_break_the_qk_symmetry(repo_root, tmp_path, capsys):
    text = SPEC.read_text()
    assert KEY_WEIGHT in text and KEY_BIAS in text, "the spec's key lines changed; update this test"
    broken = tmp_path / "tiny-transformer-keys-primal.yaml"
    broken.write_text(text.replace(KEY_WEIGHT, KEY_WEIGHT.replace("qk.${i}')", "qk.${i})"))
                          .replace(KEY_BIAS, KEY_BIAS.replace("qk.${i}')", "qk.${i})")))
    assert main(["check", str(broken), "--trust-code"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"canonicalize: relative error \S+  ok", out)
    failed = {site for site, verdict in site_results(out).items() if verdict == "FAILED"}
    assert failed == {"qk.0", "qk.1", "all sites"}  # only the query/key maps (and all sites together) break


def test_the_draft_to_alignment_loop_of_section_2_9_runs(repo_root, tmp_path, capsys):
    # docs/spec-language.md, 2.9: infer a draft, check it, align with it (the commands as written)
    factory = "examples.tiny_transformer:tiny_transformer"
    draft = tmp_path / "my-model.yaml"
    assert main(["infer", "--model", factory, "-o", str(draft)]) == 0
    assert main(["check", str(draft), "--trust-code"]) == 0
    assert "result: OK" in capsys.readouterr().out
    assert main(["align", factory, factory, "--spec", str(draft), "-o", str(tmp_path / "aligned")]) == 0
    assert (tmp_path / "aligned" / "symdsl_model.json").is_file()
