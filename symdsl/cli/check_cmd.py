"""``symdsl check [SPEC ...] [--model REF] [--json]``: validate specs numerically (float64)."""
from __future__ import annotations

import json
import sys

from ..check.numeric import DEFAULT_TOLERANCE, NumericReport, numeric_check
from ..check.static import StaticReport, static_check
from ..errors import BindError, SpecError, UsageError
from ..models.load import load_model
from ..spec.config import config_mismatches, model_config
from ..spec.inputs import SYNTAX, parse_input_shapes, with_input_shapes
from ..spec.registry import find_spec, list_specs, match_spec, spec_matches
from .logs import get_logger
from .progress import progress_bar

log = get_logger("check")


def add_parser(sub) -> None:
    p = sub.add_parser("check", help="validate specs: every declared symmetry must leave the model's outputs unchanged",
                       description="Build each spec's example model (or load --model), canonicalize it, apply a "
                       "random element of every site in float64 and compare outputs. Exit 0 when all hold, 1 when "
                       "any fails or a spec is invalid, 2 for usage errors.")
    p.add_argument("specs", nargs="*", metavar="SPEC", help="spec name or .yaml file (default: every known spec)")
    p.add_argument("--model", metavar="REF", help="check on this model instead of the spec's example: a "
                   "save_pretrained folder, timm:NAME or module:factory")
    p.add_argument("--checkpoint", metavar="FILE", help="weights for a timm:NAME or module:factory model")
    p.add_argument("--inputs", action="append", default=[], metavar="NAME=SHAPE", help="shape of an example input "
                   f"instead of the one the spec derives from the model's configuration: {SYNTAX}")
    p.add_argument("--json", action="store_true", help="print a machine-readable report")
    p.add_argument("--trust-code", action="store_true", help="let a spec file's example.factory and a model folder's "
                   "record import and run code (see docs/security.md); specs of installed plugins need no flag")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE, help="relative error allowed (default 1e-9)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the example model's weights, the test inputs and the random group elements (default 0)")
    p.add_argument("--backend", default="auto", help="graph capture backend for the static check: auto (export, "
                   "then fx), export, fx, or a plugin's")
    only = p.add_mutually_exclusive_group()
    only.add_argument("--static-only", action="store_true", help="run only the static graph check")
    only.add_argument("--numeric-only", action="store_true", help="run only the numeric check")
    p.set_defaults(run=run)


def _static_text(report: StaticReport) -> str:
    lines = [f"static check ({report.backend} graph, {report.nodes} nodes)"]
    lines += [f"  note: {note}" for note in report.notes]
    for finding in report.findings:
        lines.append(f"  VIOLATION {finding}")
    for name in report.unused_tensors:
        lines.append(f"  note: spec tensor '{name}' is never used by the traced graph")
    lines.append("  ok: every op respects the declared sites" if report.ok
                 else f"  FAILED: {len(report.findings)} violation(s)")
    return "\n".join(lines)


def _report_text(report: NumericReport, file: str) -> str:
    lines = ["numeric check (float64)",
             f"  canonicalize: relative error {report.canonicalize_error:.2e}  "
             f"{'ok' if report.canonicalize_error < report.tolerance else 'FAILED'}"
             + (f"\n    first failing step: {report.canonicalize_step}" if report.canonicalize_step else ""),
             f"  {'site':<16} {'group':<18} {'max abs err':>12} {'rel err':>10}"]
    for s in report.sites:
        name = "all sites" if s.site == "*" else s.site
        lines.append(f"  {name:<16} {s.group:<18} {s.max_abs_error:>12.2e} {s.relative_error:>10.2e}  "
                     f"{'ok' if s.ok else 'FAILED'}")
    verdict = "ok" if report.ok else f"FAILED: {len(report.failed_sites)} site(s) broke invariance"
    lines.append(f"  {verdict}; {len(report.sites) - 1} sites, tolerance {report.tolerance:g}")
    lines += [f"  note: {note}" for note in report.notes]
    if report.requested_tolerance is not None:
        lines.append(f"  (tolerance raised from {report.requested_tolerance:g}: run in float64, the model still "
                     f"computes in {report.precision} inside, first in '{report.precision_source}')")
    return "\n".join(lines)


def refusal(spec, model) -> str | None:
    """Why ``spec`` does not claim ``model`` (its ``matches`` classes or ``matches.config``), or None if it does.

    A spec whose ``matches`` names no class claims every model it is run on.
    """
    matches = spec.document.matches
    if not (matches.transformers or matches.timm or matches.torch) or spec_matches(spec, model):
        return None
    name = type(model).__name__
    wrong = config_mismatches(spec, model_config(model))
    if wrong:
        return f"spec '{spec.name}' does not claim this {name}: " + ", ".join(
            f"its matches.config has {key} = {want!r}, the model's is {have!r}" for key, want, have in wrong)
    named = [*matches.transformers, *matches.timm, *matches.torch]
    return f"spec '{spec.name}' does not claim this {name}: its matches name {', '.join(named)}"


def binding_hint(spec, model, registries) -> str | None:
    """When ``spec`` was named for ``model`` but cannot bind it: the installed spec that does, as a fix.

    A timm ViT without a class token, checked against ``timm-vit``, fails on the missing
    ``cls_token``; the user wants to hear that ``timm-vit-gap`` describes it.
    """
    try:
        other = match_spec(model, registries)
    except UsageError:          # no spec, or several: nothing better to suggest
        return None
    if other.name == spec.name:
        return None
    return (f"the installed spec '{other.name}' ({other.file}) binds this {type(model).__name__}: "
            f"symdsl check {other.name} --model MODEL (or leave the spec out and check picks it)")


def _load_specs(args, registries) -> tuple[list, list[dict]]:
    """The named specs; with several, an invalid one is a failed result (``problems``) and the others still run."""
    specs, invalid = [], []
    for name in args.specs:
        try:
            specs.append(find_spec(name, registries, trust_code=args.trust_code))
        except SpecError as exc:
            if len(args.specs) == 1 and not args.json:
                raise
            invalid.append({"spec": name, "ok": False, "problems": [str(p) for p in exc.problems]})
            if not args.json:
                print(f"spec {name}: {exc}\nresult: FAILED\n", file=sys.stderr)
    return specs, invalid


def run(args) -> int:
    registries = args.registries
    model = (load_model(args.model, checkpoint=args.checkpoint, loaders=registries.model_loaders.values(),
                        trust_code=args.trust_code) if args.model else None)
    results: list[dict] = []
    if args.specs:
        specs, results = _load_specs(args, registries)
    elif model is not None:
        specs = [match_spec(model, registries)]
    else:
        specs = [e.spec for e in list_specs(registries)]
    shapes = parse_input_shapes(args.inputs)
    specs = [with_input_shapes(spec, shapes) for spec in specs]
    failed = bool(results)
    # several specs against one model: a spec that does not claim it is reported as refused (one line), not run
    screen = model is not None and len(args.specs) > 1
    claimed = 0
    for spec in specs:
        reason = refusal(spec, model) if screen else None
        if reason is not None:
            results.append({"spec": spec.name, "file": spec.file, "refused": reason, "ok": None})
            if not args.json:
                print(f"spec {spec.name} ({spec.file}): refused: {reason}\n")
            continue
        claimed += 1
        result = {"spec": spec.name, "file": spec.file}
        try:
            if not args.json:
                print(f"spec {spec.name} ({spec.file})" + (f" on {args.model}" if args.model else ""))
            if not args.numeric_only:
                static = static_check(spec, model, registries=registries, backend=args.backend, seed=args.seed)
                result["static"] = static.to_dict()
                if not args.json:
                    print(_static_text(static))
            if not args.static_only:
                with progress_bar(f"check {spec.name}", disable=args.json) as bar:
                    numeric = numeric_check(spec, model, registries=registries, seed=args.seed, tolerance=args.tolerance,
                                            progress=bar.counter("numeric check"))
                result["numeric"] = numeric.to_dict()
                if not args.json:
                    print(_report_text(numeric, spec.file))
        except (SpecError, BindError) as exc:     # this spec fails; the others still run
            result["problems"] = [str(p) for p in exc.problems] if isinstance(exc, SpecError) else [str(exc)]
            hint = binding_hint(spec, model, registries) if model is not None and args.specs else None
            if hint:
                result["problems"].append(hint)
            if not args.json:
                log.error("spec %s (%s): %s%s", spec.name, spec.file, exc, f"\n  fix: {hint}" if hint else "")
        result["ok"] = "problems" not in result and all(result[k]["ok"] for k in ("static", "numeric") if k in result)
        failed |= not result["ok"]
        results.append(result)
        if not args.json:
            print(f"result: {'OK' if result['ok'] else 'FAILED'}\n")
    if screen and not claimed and not failed:
        # nothing was checked: that is not a pass
        message = f"none of the {len(specs)} specs claims the model {args.model}; name the spec written for it"
        if args.json:
            results.append({"model": args.model, "ok": False, "problems": [message]})
        else:
            print(f"result: FAILED: {message}")
        failed = True
    if args.json:
        json.dump(results if len(results) != 1 else results[0], sys.stdout, indent=2)
        print()
    return 1 if failed else 0
