"""``symdsl infer --model REF [-o spec.yaml]``: draft a spec by propagating symmetries through the graph.

Exit codes: 0 the draft passes its own static and numeric check, 1 it does not (the draft is
still written, with the failing sites reported), 2 usage errors.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from ..errors import UsageError
from ..infer import check_draft, infer_spec
from ..models.build import import_object
from ..models.load import load_model
from ..models.output import check_output_file
from .logs import get_logger

log = get_logger("infer")


def add_parser(sub) -> None:
    p = sub.add_parser("infer", help="draft a spec for a model from its traced graph (no spec needed)",
                       description="Trace the model, find which parameter axes must transform together, pick the "
                       "largest group each set admits, and write a commented draft spec. The draft is checked "
                       "(static and numeric, as `symdsl check` does) before it is written. Exit 0 when it passes, "
                       "1 when it does not, 2 for usage errors.")
    p.add_argument("--model", required=True, metavar="REF", help="a save_pretrained folder, timm:NAME or "
                   "module:factory")
    p.add_argument("-o", "--output", metavar="FILE", help="write the draft here (default: stdout)")
    p.add_argument("--config", metavar="JSON", help="constructor keyword arguments for timm:NAME or module:factory "
                   "(JSON text or a .json file); also written to the draft's example.config")
    p.add_argument("--inputs", metavar="JSON", help="forward() inputs as spec entries, e.g. "
                   "'{\"x\": {\"randn\": true, \"shape\": [2, 3, 32, 32]}}' (default: guessed from the model)")
    p.add_argument("--name", help="spec name (default: CLASS-draft)")
    p.add_argument("--backend", default="auto", help="graph capture backend: auto, export, fx, or a plugin's")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the example inputs traced and of the draft's numeric check (default 0)")
    p.add_argument("--trust-code", action="store_true", help="let a model folder's symdsl_model.json name a class "
                   "outside timm, transformers, torch.nn and registered loaders (see docs/security.md)")
    p.add_argument("--tolerance", type=float, default=None, help="relative error the numeric check allows "
                   "(default 1e-9, as `symdsl check`)")
    p.add_argument("--no-check", action="store_true", help="write the draft without checking it")
    p.set_defaults(run=run)


def _json_arg(value: str | None, option: str):
    if value is None:
        return None
    text = Path(value).read_text() if value.endswith(".json") and Path(value).is_file() else value
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{option}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{option}: expected a JSON object, got {type(data).__name__}")
    return data


def _load(ref: str, config: dict | None, loaders=(), trust_code: bool = False):
    """The model for REF and how the draft's example rebuilds it: (model, factory, timm_name)."""
    if Path(ref).is_dir():
        if config is not None:
            raise UsageError("--config applies to timm:NAME and module:factory models; a save_pretrained folder "
                             "has its own config.json")
        return load_model(ref, loaders=loaders, trust_code=trust_code), None, None
    if ref.startswith("timm:"):
        if config is None:
            return load_model(ref, loaders=loaders), None, ref[5:]
        import timm

        return timm.create_model(ref[5:], pretrained=False, **config).eval(), None, ref[5:]
    if ":" in ref:
        if config is None:
            return load_model(ref, loaders=loaders), ref, None
        model = import_object(ref)(**config)
        if not isinstance(model, torch.nn.Module):
            raise UsageError(f"{ref} returned {type(model).__name__}, not a torch.nn.Module")
        return model.eval(), ref, None
    raise UsageError(f"cannot load model '{ref}': give a save_pretrained folder, timm:NAME or module:factory")


def _report(draft, check, out) -> None:
    counts = ", ".join(f"{n} {kind}" for kind, n in draft.site_counts().items()) or "no sites"
    print(f"symdsl infer: {draft.model}: {counts}", file=out)
    for line in draft.info:
        print(f"  {line}", file=out)
    for note in draft.notes:
        print(f"  left unbound: {note}", file=out)
    for warning in draft.warnings:
        print(f"  warning: {warning}", file=out)
    if check is None:
        return
    if check.error:
        print(f"  check: the draft could not be checked: {check.error}", file=out)
        return
    static, numeric = check.static, check.numeric
    print(f"  static check ({static.backend} graph, {static.nodes} nodes): "
          f"{'ok' if static.ok else f'{len(static.findings)} violation(s)'}", file=out)
    for finding in static.findings[:10]:
        print(f"    VIOLATION {finding}", file=out)
    worst = max((s.relative_error for s in numeric.sites), default=0.0)
    print(f"  numeric check (float64): canonicalize {numeric.canonicalize_error:.1e}, worst relative error "
          f"{worst:.1e}: {'ok' if numeric.ok else 'FAILED'}", file=out)
    for site in numeric.failed:
        print(f"    FAILED {site.site if site.site != '*' else 'all sites'} ({site.group}): relative error "
              f"{site.relative_error:.1e}", file=out)


def run(args) -> int:
    config = _json_arg(args.config, "--config")
    inputs = _json_arg(args.inputs, "--inputs")
    registries = args.registries
    if args.output:
        check_output_file(args.output, inputs=[args.model], option="-o")
    model, factory, timm_name = _load(args.model, config, registries.model_loaders.values(), args.trust_code)
    draft = infer_spec(model, factory=factory, timm_name=timm_name, config=config, inputs=inputs, name=args.name,
                       backend=args.backend, seed=args.seed, registries=registries)
    check = None if args.no_check else check_draft(draft.text, registries=registries, seed=args.seed, file=args.output or "<draft>",
                                                      tolerance=args.tolerance)
    if args.output:
        Path(args.output).write_text(draft.text)
    else:
        sys.stdout.write(draft.text)
    _report(draft, check, sys.stderr)
    if args.output:
        log.info("  wrote %s", args.output)
    if check is not None and not check.ok:
        log.error("  the draft fails its own check: the sites named above are guesses the model does not support; "
                  "edit or remove them")
        return 1
    return 0
