"""``symdsl plugins``: everything the loaded plugins contribute, and where it comes from."""
from __future__ import annotations

import json
import sys

from ..options import declared, describe_options, option_rows

WITH_OPTIONS = ("matcher", "merger")     # categories whose plugins declare options


def add_parser(sub) -> None:
    p = sub.add_parser("plugins", help="list group kinds, canonicalizers, matchers, mergers, rules ... and their plugins")
    p.add_argument("--json", action="store_true", help="print a machine-readable list")
    p.add_argument("--all", action="store_true", help="also list every op rule (long)")
    p.set_defaults(run=run)


def run(args) -> int:
    registries = args.registries
    rows = [{"category": c.category, "name": c.name, "plugin": c.plugin, "description": c.description,
             **({"options": option_rows(declared(c.obj))} if c.category in WITH_OPTIONS else {})}
            for c in registries.contributions()]
    if args.json:
        json.dump({"plugins": list(registries.plugins), "blocked": list(registries.blocked), "contributions": rows},
                  sys.stdout, indent=2)
        print()
        return 0
    print(f"plugins: {', '.join(registries.plugins)}"
          + (f"   (blocked: {', '.join(registries.blocked)})" if registries.blocked else ""))
    by_category: dict[str, list[dict]] = {}
    for row in rows:
        by_category.setdefault(row["category"], []).append(row)
    for category, items in by_category.items():
        if category == "op rule" and not args.all:
            origins = sorted({r["plugin"] for r in items})
            print(f"\nop rules: {len(items)} ops from {', '.join(origins)} (--all lists them)")
            continue
        print(f"\n{category}s:")
        width = max(len(r["name"]) for r in items)
        for r in items:
            print(f"  {r['name']:<{width}}  [{r['plugin']}]  {r['description']}")
            if category in WITH_OPTIONS:
                _print_options(registries, category, r["name"])
    return 0


def _print_options(registries, category: str, name: str) -> None:
    """A matcher's or merger's declared options, one per line under it (``--option KEY=VALUE``)."""
    registry = registries.matchers if category == "matcher" else registries.mergers
    text = describe_options(declared(registry[name]), details=True)
    lines = text.splitlines()
    if len(lines) == 1 and "(" not in lines[0]:            # 'none' or 'not declared (...)'
        print(f"      options: {text}")
        return
    print("      options:")
    for line in lines:
        print(f"        {line}")
