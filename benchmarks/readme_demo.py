"""Regenerate the README's demo numbers and figure from the current code.

    python benchmarks/readme_demo.py                      # run `symdsl demo` (vit), then rewrite
    python benchmarks/readme_demo.py --from symdsl-demo/demo.json --figure symdsl-demo/curves.png

Writes docs/images/demo.json (the demo's record) and docs/images/demo-curves.png, and rewrites
the README between the `<!-- demo:table -->` and `<!-- demo:summary -->` markers from that
record. tests/test_readme.py checks that the README says exactly what this script renders from
docs/images/demo.json, so the README's numbers cannot drift from a recorded run.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README, RECORD, FIGURE = ROOT / "README.md", ROOT / "docs" / "images" / "demo.json", ROOT / "docs" / "images" / "demo-curves.png"


def _rows(record: dict) -> dict[str, dict]:
    return {row["method"]: row for row in record["rows"]}


def render_table(record: dict) -> str:
    """The demo's printed table and last line, as a console block."""
    from symdsl.experiments.demo import table_lines

    lines = table_lines(record["rows"])
    lines.append(f"wrote symdsl-demo/curves.png and symdsl-demo/demo.json ({record['seconds']:.0f} s in all)")
    return "```\n" + "\n".join(lines) + "\n```"


def render_summary(record: dict) -> str:
    """The paragraph under the figure, its numbers taken from the record."""
    rows = _rows(record)
    vanilla = rows["vanilla averaging"]["loss_barrier"]
    perms = rows["weight matching, permutations only"]["loss_barrier"]
    full = rows["weight matching, full symmetries"]["loss_barrier"]
    learned = rows["learned matching, full symmetries"]["loss_barrier"]
    removed = 100 * (1 - full / perms)
    ratio = f"{vanilla / learned:,.0f} times smaller than" if learned > 0 else "no barrier, against"
    return (f"The full symmetry set (rotation of the residual stream, head permutations, per-head invertible\n"
            f"maps, MLP permutations) removes {removed:.0f} % of the barrier that permutations alone leave\n"
            f"({perms:.3f} -> {full:.3f} nats with weight matching); learned matching, trained on the loss of the\n"
            f"interpolated model from the weight-matching start, takes it to {learned:.3f} nats, {ratio}\n"
            f"vanilla averaging's {vanilla:.3f}, while B stays a standard checkpoint with its own function.")


def replace_block(text: str, name: str, body: str) -> str:
    """``text`` with the lines between ``<!-- name -->`` and ``<!-- /name -->`` replaced by ``body``."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    if text.count(start) != 1 or text.count(end) != 1:
        raise SystemExit(f"README.md must hold one '{start}' ... '{end}' block")
    head, rest = text.split(start)
    _, tail = rest.split(end)
    return f"{head}{start}\n{body}\n{end}{tail}"


def render_readme(text: str, record: dict) -> str:
    return replace_block(replace_block(text, "demo:table", render_table(record)), "demo:summary",
                         render_summary(record))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", help="a demo.json already written by symdsl demo")
    parser.add_argument("--figure", help="its curves.png (default: beside the demo.json)")
    parser.add_argument("--output", default="symdsl-demo", help="where a new demo run writes (default symdsl-demo)")
    args = parser.parse_args(argv)
    if args.source is None:
        from symdsl.experiments.demo import run_demo

        run_demo("vit", output=args.output)
        args.source = str(Path(args.output) / "demo.json")
    source = Path(args.source)
    record = json.loads(source.read_text())
    figure = Path(args.figure) if args.figure else source.with_name("curves.png")
    RECORD.parent.mkdir(parents=True, exist_ok=True)
    RECORD.write_text(json.dumps(record, indent=2) + "\n")
    shutil.copyfile(figure, FIGURE)
    README.write_text(render_readme(README.read_text(), record))
    print(f"wrote {RECORD.relative_to(ROOT)}, {FIGURE.relative_to(ROOT)} and the README's demo blocks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
