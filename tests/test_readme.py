"""The README's demo numbers are what benchmarks/readme_demo.py renders from the recorded run in
docs/images/demo.json (regenerate both with that script), and the recorded run is consistent."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("readme_demo", ROOT / "benchmarks" / "readme_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_says_what_the_script_renders_from_the_recorded_run():
    script = _script()
    record = json.loads((ROOT / "docs" / "images" / "demo.json").read_text())
    readme = (ROOT / "README.md").read_text()
    assert script.render_readme(readme, record) == readme


def test_the_recorded_run_has_every_method_and_its_barriers_match_its_curves():
    from symdsl.evaluate import Curve, barrier

    record = json.loads((ROOT / "docs" / "images" / "demo.json").read_text())
    methods = [row["method"] for row in record["rows"]]
    assert methods[0] == "vanilla averaging" and "learned matching, full symmetries" in methods
    for row in record["rows"]:
        found = barrier(Curve.from_dict(record["curves"][row["method"]]))
        assert abs(found.loss - row["loss_barrier"]) < 1e-9 and abs(found.accuracy - row["accuracy_barrier"]) < 1e-9
    assert (ROOT / "docs" / "images" / "demo-curves.png").stat().st_size > 10_000
