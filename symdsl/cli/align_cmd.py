"""``symdsl align``, ``symdsl merge`` and ``symdsl barrier``: the alignment pipeline on saved models."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import yaml

from ..errors import UsageError
from ..models import load_model, save_model
from ..pipeline import Alignment, align_pair, merge_models
from .progress import progress_bar
from .text_data import add_text_options, text_options


def _common(p, *, data_required=False) -> None:
    p.add_argument("--spec", metavar="SPEC", help="spec name or .yaml file (default: the registry's match for A)")
    p.add_argument("--matcher", default="weight", help="matcher plugin (default: weight; `symdsl plugins` lists them)")
    p.add_argument("--permutations-only", action="store_true",
                   help="restrict rotations to permutations and skip invertible maps (the paper's baseline)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="extra matcher option, e.g. --option max_iter=50 (repeatable)")
    p.add_argument("--data", required=data_required, metavar="DATA",
                   help="evaluation/activation data: digits, stdlib-text, text:PATH (see docs)")
    add_text_options(p)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--seed", type=int, default=0)


def add_parsers(sub) -> None:
    a = sub.add_parser("align", help="write model B aligned to model A (a standard checkpoint of B's class)")
    a.add_argument("a", metavar="A", help="reference model: a save_pretrained or symdsl folder, timm:NAME@FILE, "
                   "or module:factory")
    a.add_argument("b", metavar="B", help="model to align to A")
    _common(a)
    a.add_argument("-o", "--output", required=True, metavar="OUT", help="folder to write aligned B into")
    a.set_defaults(run=run_align)

    m = sub.add_parser("merge", help="align models to the first and average them into one standard checkpoint")
    m.add_argument("models", nargs="+", metavar="MODEL", help="two or more models (the first is the reference)")
    m.add_argument("--weights", type=float, nargs="+", help="merge weights (default: equal)")
    m.add_argument("--merger", default="average", help="merger plugin (default: average)")
    m.add_argument("--refine", action="store_true",
                   help="three or more models: train the universe transforms on the task loss (needs --data; "
                        "also chosen by --matcher learned)")
    m.add_argument("--pairwise", action="store_true",
                   help="three or more models: align each to the first with --matcher instead of universe matching")
    m.add_argument("--plot", metavar="FILE.png",
                   help="three models: loss/accuracy over the simplex of the aligned models (PNG, JSON beside it; "
                        "needs --data)")
    _common(m)
    m.add_argument("-o", "--output", required=True, metavar="OUT", help="folder to write the merged model into")
    m.set_defaults(run=run_merge)

    b = sub.add_parser("barrier", help="loss/accuracy along the straight line from B to A, vanilla and aligned")
    b.add_argument("a", metavar="A")
    b.add_argument("b", metavar="B")
    _common(b, data_required=True)
    b.add_argument("--points", type=int, default=11, help="grid points on [0, 1] (default 11)")
    b.add_argument("--split", default="test", choices=["test", "train"])
    b.add_argument("--max-batches", type=int, default=None, help="evaluate only the first N batches of the split")
    b.add_argument("--json", metavar="FILE", help="write curves and barriers as JSON")
    b.add_argument("--plot", metavar="FILE.png", help="write the curves as a PNG plot")
    b.set_defaults(run=run_barrier)


def _data(args):
    """The --data reference as a Dataset (built once, with --tokenizer / --max-chars), or None without --data."""
    from ..data import load_dataset

    if args.data is None:
        text_options(args, None)   # refuses --tokenizer / --max-chars given without --data
        return None
    cached = getattr(args, "_dataset", None)
    if cached is None:
        cached = args._dataset = load_dataset(args.data, **text_options(args, args.data))
    return cached


def _device(name):
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda given but no CUDA device is available")
    return name


def _options(args) -> dict:
    options = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--option takes KEY=VALUE, got '{item}'")
        options[key.replace("-", "_")] = yaml.safe_load(value)
    if args.permutations_only:
        options["permutations_only"] = True
    return options


def _align(args, a, b, device) -> Alignment:
    """B aligned to A; a narrower B is first lifted into A's configuration (width-heterogeneous)."""
    from ..width import align_widths, needs_lift, wide_and_narrow

    with progress_bar(f"align ({args.matcher})") as bar:
        report = lambda phase, done, total: bar(done, total)
        if not needs_lift(a, b):
            return align_pair(a, b, args.spec, args.matcher, device=device, data=_data(args), seed=args.seed,
                              progress=report, **_options(args))
        if wide_and_narrow(a, b, args.spec)[2]:
            raise UsageError(f"B ({args.b}) is wider than A ({args.a}): the narrow model is lifted into the wide "
                             "one's configuration, and the result lives in A's space, so A must be the wide model; "
                             "swap A and B")
        width = align_widths(a, b, args.spec, args.matcher, data=_data(args), seed=args.seed, device=device,
                             progress=report, **_options(args))
        print(f"B is narrower than A: lifted into A's configuration (same function), then matched in A's space",
              file=sys.stderr)
        return Alignment(width.prepared, width.result, width.aligned, {"width_lift": width.lifted.to_record()})


def _refuse_architecture_change(resolved, command: str) -> None:
    """A spec whose canonicalizers change the architecture cannot produce a standard checkpoint."""
    from ..canon import get_canonicalizer

    changed = sorted({s.name for s in resolved.canonicalize if get_canonicalizer(s.name).changes_architecture})
    if changed:
        raise UsageError(f"spec '{resolved.spec.name}' changes the architecture ({', '.join(changed)}): its models "
                         f"are not standard checkpoints, so `symdsl {command}` will not write one; compare routes "
                         "with `symdsl barrier`, or use the Python API (symdsl.pipeline)")


def _refuse_spec(spec_name: str, model, command: str) -> None:
    from ..spec import resolve
    from ..spec.registry import find_spec

    _refuse_architecture_change(resolve(find_spec(spec_name), model), command)


def _save_transform(alignment: Alignment, folder: Path) -> None:
    from safetensors.torch import save_file

    elements = {k: v.detach().contiguous().cpu() for k, v in alignment.result.elements.items()}
    save_file(elements, str(folder / "transform.safetensors"))


def run_align(args) -> int:
    device = _device(args.device)
    a, b = load_model(args.a), load_model(args.b)
    if args.spec:
        _refuse_spec(args.spec, a, "align")
    start = time.perf_counter()
    alignment = _align(args, a, b, device)
    seconds = time.perf_counter() - start
    model = alignment.prepared.models[1]
    model.load_state_dict(alignment.aligned_b)
    out = Path(args.output)
    save_model(model.cpu(), out, {"command": "align", "a": args.a, "b": args.b, "spec": alignment.prepared.spec.name,
                                  "seconds": seconds, **alignment.result.to_record(), **alignment.info})
    _save_transform(alignment, out)
    objective = alignment.result.objective
    progress = f"objective {objective[0]:.4g} -> {objective[-1]:.4g}, " if objective else ""
    print(f"aligned {args.b} to {args.a} with spec {alignment.prepared.spec.name}, matcher {args.matcher}: "
          f"{progress}{seconds:.1f} s")
    print(f"wrote {out}/ (standard checkpoint, transform.safetensors, symdsl.json)")
    return 0


def run_merge(args) -> int:
    if len(args.models) < 2:
        raise UsageError("merge needs at least two models")
    device = _device(args.device)
    models = [load_model(ref) for ref in args.models]
    if args.spec:
        _refuse_spec(args.spec, models[0], "merge")
    if len(models) >= 3 and not args.pairwise:
        return _merge_universe(args, models, device)
    if args.refine or args.plot:
        raise UsageError("--refine and --plot apply to universe merges of three or more models")
    from ..width import needs_lift

    if len(models) == 2 and needs_lift(*models):
        return _merge_widths(args, models, device)
    start = time.perf_counter()
    with progress_bar(f"merge ({args.matcher})") as bar:
        merged, results = merge_models(models, args.spec, args.matcher, weights=args.weights, merger=args.merger,
                                       device=device, data=_data(args), seed=args.seed,
                                       progress=lambda phase, done, total: bar(done, total), **_options(args))
    seconds = time.perf_counter() - start
    out = Path(args.output)
    save_model(merged.cpu(), out, {"command": "merge", "models": args.models, "weights": args.weights,
                                   "merger": args.merger, "seconds": seconds,
                                   "alignments": [r.to_record() for r in results]})
    print(f"merged {len(models)} models ({args.matcher} matching, {args.merger}) in {seconds:.1f} s; wrote {out}/")
    return 0


def run_barrier(args) -> int:
    from ..evaluate import barrier, loss_curve, plot_curves

    device = _device(args.device)
    dataset = _data(args)
    a, b = load_model(args.a), load_model(args.b)
    alignment = _align(args, a, b, device)
    prepared = alignment.prepared
    template = prepared.models[0]
    curves = {}
    for label, state_b in (("vanilla", prepared.states[1]), (f"{args.matcher} matching", alignment.aligned_b)):
        with progress_bar(f"curve: {label}") as bar:
            curves[label] = loss_curve(template, prepared.states[0], state_b, dataset, points=args.points,
                                       split=args.split, max_batches=args.max_batches, progress=bar)
    rows = []
    record = {"a": args.a, "b": args.b, "spec": prepared.spec.name, "data": dataset.name, "matcher": args.matcher,
              "alignment": alignment.result.to_record(), **alignment.info, "curves": {}}
    for label, curve in curves.items():
        paper, mean = barrier(curve), barrier(curve, definition="mean")
        rows.append((label, paper.loss, paper.accuracy, mean.loss))
        record["curves"][label] = {**curve.to_dict(), "barrier": paper.to_dict(), "barrier_mean": mean.to_dict()}
    print(f"{args.a} (lambda=1) <-> {args.b} (lambda=0) on {dataset.name} ({args.split}), spec {prepared.spec.name}")
    print(f"{'path':<22} {'loss barrier':>13} {'acc barrier':>12} {'loss barrier (mean def.)':>25}")
    for label, loss, acc, mean_loss in rows:
        print(f"{label:<22} {loss:>13.4f} {acc:>12.4f} {mean_loss:>25.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.plot:
        plot_curves(curves, args.plot, title=f"{prepared.spec.name}: {Path(args.a).name} vs {Path(args.b).name}")
        print(f"wrote {args.plot}")
    return 0


def _merge_widths(args, models, device) -> int:
    """Two models of different widths: lift B into A's configuration, align, average in A's space."""
    from ..merge import get_merger

    start = time.perf_counter()
    alignment = _align(args, models[0], models[1], device)
    merged = alignment.prepared.models[0]
    merged.load_state_dict(get_merger(args.merger).merge([alignment.prepared.states[0], alignment.aligned_b],
                                                         args.weights))
    seconds = time.perf_counter() - start
    out = Path(args.output)
    save_model(merged.cpu(), out, {"command": "merge", "models": args.models, "weights": args.weights,
                                   "merger": args.merger, "seconds": seconds,
                                   "alignments": [alignment.result.to_record()], **alignment.info})
    print(f"merged a lifted narrow model into {args.models[0]} ({args.matcher} matching, {args.merger}) in "
          f"{seconds:.1f} s; wrote {out}/ (A's configuration)")
    return 0


def _merge_universe(args, models, device) -> int:
    """Three or more models: universe matching (optionally refined), then the weighted average."""
    from ..match.universe_merge import merge_universe

    if args.matcher not in ("weight", "learned"):
        raise UsageError(f"universe merging uses weight matching (refined with --refine or --matcher learned); "
                         f"for --matcher {args.matcher} add --pairwise to align every model to the first")
    refine = args.refine or args.matcher == "learned"
    options = _options(args)
    universe_options = {k: v for k, v in options.items() if k in ("max_iter", "tol", "permutations_only",
                                                                  "invertible_steps", "weight_max_iter", "weight_tol")}
    refine_options = {k: v for k, v in options.items() if k not in universe_options or k == "permutations_only"}
    if not refine and refine_options.keys() - {"permutations_only"}:
        raise UsageError(f"option(s) {sorted(refine_options.keys() - {'permutations_only'})} are refinement options: "
                         "add --refine")
    start = time.perf_counter()
    with progress_bar("merge (universe" + (" + refinement)" if refine else ")")) as bar:
        out = merge_universe(models, args.spec, refine=refine, dataset=_data(args), weights=args.weights,
                             merger=args.merger, surface_path=args.plot, seed=args.seed, device=device,
                             progress=lambda phase, done, total: bar(done, total),
                             universe_options=universe_options, refine_options=refine_options if refine else None)
    seconds = time.perf_counter() - start
    folder = Path(args.output)
    save_model(out.model.cpu(), folder, {"command": "merge", "models": args.models, "weights": args.weights,
                                         "merger": args.merger, "seconds": seconds, "method": "universe"
                                         + (" + refinement" if refine else ""), **out.to_record()})
    objective = out.universe.objective
    print(f"merged {len(models)} models (universe matching{' + refinement' if refine else ''}, {args.merger}) in "
          f"{seconds:.1f} s; universe objective {objective[0]:.4g} -> {objective[-1]:.4g}; wrote {folder}/")
    for label, surface in out.surfaces.items():
        summary = surface.summary()
        print(f"  {label:<26} max loss gap over the simplex {summary['max_loss_gap']:.3f}")
    if args.plot:
        print(f"wrote {args.plot} and {Path(args.plot).with_suffix('.json')}")
    return 0
