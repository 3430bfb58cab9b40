"""``symdsl specs`` and ``symdsl schema``."""
from __future__ import annotations

import json
import sys

from ..spec.registry import list_specs
from ..spec.schema import json_schema


def add_parsers(sub) -> None:
    p = sub.add_parser("specs", help="list the specs symdsl knows (shipped and from plugins)")
    p.add_argument("--json", action="store_true", help="machine-readable list")
    p.set_defaults(run=run_specs)
    s = sub.add_parser("schema", help="print the spec language as JSON Schema (for editors and CI)")
    s.set_defaults(run=run_schema)


def run_specs(args) -> int:
    entries = list_specs(args.registries)
    rows = [{"name": e.name, "file": str(e.file), "origin": e.origin,
             "matches": {k: v for k, v in e.spec.document.matches.model_dump().items() if v},
             "description": e.spec.document.description or ""} for e in entries]
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
        return 0
    width = max([len(r["name"]) for r in rows] + [4])
    print(f"{'name':<{width}}  matches")
    for r in rows:
        matches = "; ".join(f"{lib}: {', '.join(names)}" for lib, names in r["matches"].items())
        print(f"{r['name']:<{width}}  {matches}")
    return 0


def run_schema(args) -> int:
    json.dump(json_schema(), sys.stdout, indent=2)
    print()
    return 0
