"""`symdsl demo` end to end (short training), with its table, plot, record and model cache."""
from __future__ import annotations

import json

from symdsl.cli.main import main


def test_demo_runs_and_reports_every_method(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SYMDSL_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    assert main(["demo", "--steps", "120", "--learn-steps", "60", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    for line in ("vanilla averaging", "activation matching", "weight matching, permutations only",
                 "weight matching, full symmetries", "learned matching, permutations only",
                 "learned matching, full symmetries", "loss barrier"):
        assert line in text
    record = json.loads((out / "demo.json").read_text())
    rows = {r["method"]: r for r in record["rows"]}
    assert rows["weight matching, full symmetries"]["loss_barrier"] < rows["vanilla averaging"]["loss_barrier"]
    # learned matching starts from weight matching and keeps its best validation point
    assert rows["learned matching, full symmetries"]["loss_barrier"] < rows["vanilla averaging"]["loss_barrier"]
    assert (out / "curves.png").stat().st_size > 10_000
    # the second run reuses the cached models
    assert main(["demo", "--steps", "120", "--learn-steps", "2", "-o", str(out)]) == 0
    assert "cached" in capsys.readouterr().out
