"""``symdsl align``, ``symdsl merge`` and ``symdsl barrier``: argument parsing and printing around
:func:`symdsl.align`, :func:`symdsl.merge` and :func:`symdsl.barrier`."""
from __future__ import annotations

import contextlib
import json
import shlex
import time
from pathlib import Path

import torch
import yaml

from .. import distributed
from ..api import align, barrier, merge
from ..api.merge import check_weights, merge_options
from ..api.output_frame import OUTPUT_TRANSFORM_FILE
from ..api.pipeline import dataset_for, matcher_options
from ..errors import UsageError
from ..evaluate import plot_curves
from ..models import load_model
from ..models.output import check_output, check_output_file
from ..models.save import check_savable
from ..spec.inputs import SYNTAX, parse_input_shapes
from ..threads import set_command_threads
from .logs import get_logger
from .progress import progress_bar
from .text_data import add_text_options, text_options

log = get_logger("align")


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
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch CPU threads for the whole command (default: OMP_NUM_THREADS if set, else weight "
                        "matching picks 1 for small models and the idle cores for large ones)")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed of the matcher (learned matching's batches and sampled points; default 0)")
    p.add_argument("--trust-code", action="store_true",
                   help="let model folders name classes outside timm, transformers, torch.nn and registered loaders "
                        "(runs code named in their symdsl_model.json; see docs/security.md)")
    p.add_argument("--inputs", action="append", default=[], metavar="NAME=SHAPE", help="shape of an example input "
                   f"the spec's check runs on, instead of the one it derives from A's configuration: {SYNTAX}")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip the spec's static and numeric checks on A (they run once per architecture and are "
                        "cached; a spec that fails them is refused)")


def _dtype(p) -> None:
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="dtype of the written tensors (default auto: the input's own; computation is float32 or "
                        "better either way)")


def _command_line(args) -> str:
    """The command as typed (for the model card and symdsl.json)."""
    return shlex.join(["symdsl", *getattr(args, "argv", [])])


def add_parsers(sub) -> None:
    a = sub.add_parser("align", help="write model B aligned to model A (a standard checkpoint of B's class)")
    a.add_argument("a", metavar="A", help="reference model: a save_pretrained or symdsl folder, a Hub id "
                   "(org/name[@revision]), timm:NAME@FILE, or module:factory")
    a.add_argument("b", metavar="B", help="model to align to A")
    _common(a)
    a.add_argument("-o", "--output", required=True, metavar="OUT", help="folder to write aligned B into (new or empty)")
    a.add_argument("--overwrite", action="store_true", help="replace OUT if it exists and is not empty")
    a.add_argument("--keep-output-frame", action="store_true", help="feature models (backbones, encoders without "
                   "a head): hold the sites acting on the returned features at the identity, so the aligned model "
                   "returns B's features (a drop-in replacement for B; those sites are not matched)")
    a.add_argument("--spill-dir", metavar="DIR", help="folder on disk where the tensors canonicalization writes are "
                   "moved, so they leave memory between reads (default: OUT's parent folder; files are removed "
                   "at once; not a memory file system such as a tmpfs /tmp)")
    a.add_argument("--no-spill", action="store_true", help="keep canonicalized tensors in memory (no files written "
                   "beside OUT)")
    _dtype(a)
    a.set_defaults(run=run_align)

    m = sub.add_parser("merge", help="align models to the first and average them into one standard checkpoint")
    m.add_argument("models", nargs="+", metavar="MODEL",
                   help="two or more models (the first is the reference): folders, Hub ids, timm:NAME@FILE or "
                        "module:factory")
    m.add_argument("--weights", type=float, nargs="+", help="merge weights (default: equal)")
    m.add_argument("--merger", default="average", help="merger plugin (default: average)")
    m.add_argument("--refine", action="store_true",
                   help="three or more models: train the universe transforms on the task loss (needs --data; "
                        "also chosen by --matcher learned)")
    m.add_argument("--pairwise", action="store_true",
                   help="three or more models: align each to the first with --matcher instead of universe matching")
    m.add_argument("--plot", metavar="FILE",
                   help="three models: loss/accuracy over the simplex of the aligned models (PNG, JSON beside it; "
                        "needs --data)")
    _common(m)
    m.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="folder to write the merged model into (new or empty)")
    m.add_argument("--overwrite", action="store_true", help="replace OUT if it exists and is not empty")
    _dtype(m)
    m.set_defaults(run=run_merge)

    b = sub.add_parser("barrier", help="loss/accuracy along the straight line from B to A, vanilla and aligned")
    b.add_argument("a", metavar="A", help="model at lambda=1 (the reference B is aligned to), as for align")
    b.add_argument("b", metavar="B", help="model at lambda=0, aligned to A for the aligned curve")
    _common(b, data_required=True)
    b.add_argument("--points", type=int, default=11, help="grid points on [0, 1] (default 11)")
    b.add_argument("--split", default="test", choices=["test", "train"],
                   help="which split of --data to evaluate the curves on (default: test)")
    b.add_argument("--max-batches", type=int, default=None, help="evaluate only the first N batches of the split")
    b.add_argument("--json", metavar="FILE", help="write curves and barriers as JSON")
    b.add_argument("--plot", metavar="FILE", help="write the curves as a plot: PNG, PDF or SVG by FILE's extension")
    b.add_argument("--autocast", choices=["bfloat16", "float16"], default=None,
                   help="evaluate the curves with the forward passes in this dtype (torch.autocast; learned matching "
                        "takes its own: --option autocast=bfloat16)")
    b.set_defaults(run=run_barrier)


def _data(args):
    """The --data reference as a Dataset (built once, with --tokenizer / --max-chars), or None without --data."""
    if args.data is None:
        text_options(args, None)   # refuses --tokenizer / --max-chars given without --data
        return None
    cached = getattr(args, "_dataset", None)
    if cached is None:
        cached = args._dataset = dataset_for(args.data, args.registries, **text_options(args, args.data))
    return cached


def _device(name):
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device '{name}' is not a device; give cpu, cuda or cuda:N") from None
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda given but no CUDA device is available")
    return distributed.local_device(name)   # under torchrun, cuda is the rank's own GPU


def _join(args) -> None:
    """Join torchrun's process group when started by it (nothing on one process): learned matching and
    barrier curves then run data-parallel, and only rank 0 prints and writes."""
    distributed.init_from_env(_device(args.device))


def _progress(label: str):
    """The progress bar on rank 0; no progress on the other ranks of a torchrun job."""
    return progress_bar(label) if distributed.is_main() else contextlib.nullcontext()


def _options(args) -> dict:
    options = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--option takes KEY=VALUE, got '{item}'")
        try:
            options[key.replace("-", "_")] = yaml.safe_load(value)
        except yaml.YAMLError:       # not YAML ("lam=[0.4"): the text itself, for the declared type to judge
            options[key.replace("-", "_")] = value
    if args.permutations_only:
        options["permutations_only"] = True
    return options


def _load(args, ref):
    return load_model(ref, loaders=args.registries.model_loaders.values(), trust_code=args.trust_code)


def _check_output(args, refs) -> None:
    """Refuse a bad -o before loading anything (an input, inside one, unwritable, non-empty without --overwrite)."""
    inputs = [part for ref in refs for part in (ref, *ref.rsplit("@", 1)[1:])]   # timm:NAME@FILE names FILE
    check_output(args.output, inputs=inputs, overwrite=args.overwrite, flag="--overwrite")


def _common_kwargs(args, bar) -> dict:
    if args.threads is not None:       # the whole command, matching included (the matcher's own choice yields)
        set_command_threads(args.threads)
        torch.set_num_threads(args.threads)
    return dict(data=_data(args), seed=args.seed, device=_device(args.device), registries=args.registries,
                verify=args.verify, inputs=parse_input_shapes(args.inputs),
                progress=bar, **_options(args))


def _check_matcher_options(args) -> None:
    """Refuse an unknown matcher, a bad --option or --inputs before any model is loaded."""
    matcher_options(args.matcher, _options(args), args.registries)
    parse_input_shapes(args.inputs)


def run_align(args) -> int:
    _check_matcher_options(args)
    _check_output(args, [args.a, args.b])
    spill_dir = _spill_dir(args)
    a, b = _load(args, args.a), _load(args, args.b)
    check_savable(b)                       # before the matching, not after it
    _join(args)
    start = time.perf_counter()
    with _progress(f"align ({args.matcher})") as bar:
        # A and B are never read again here: canonicalized in place (B becomes the aligned B), two
        # copies of a model less in memory
        alignment = align(a, b, args.spec, args.matcher, keep_output_frame=args.keep_output_frame,
                          canonicalize_a_in_place=True, canonicalize_b_in_place=True, spill_dir=spill_dir,
                          **_common_kwargs(args, bar))
    seconds = time.perf_counter() - start
    if not distributed.is_main():          # rank 0 writes; every rank holds the same transform
        return 0
    out = alignment.save(args.output, {"command": "align", "a": args.a, "b": args.b, "seconds": seconds,
                                       "command_line": _command_line(args)}, overwrite=args.overwrite, dtype=args.dtype)
    for note in alignment.notes:          # known once the model is built (it is, to be saved)
        log.info("note: %s", note)
    print(f"aligned {args.b} to {args.a} with spec {alignment.spec.name}, matcher {args.matcher}: "
          f"{_objective_text(alignment.result)}{seconds:.1f} s")
    frame = alignment.output_frame
    for note in frame.notes() if frame is not None else []:     # on stdout too: B's features are not B's
        print(f"output frame: {note}".replace("keep_output_frame=True (command line: --keep-output-frame)",
                                              "--keep-output-frame"))
    extra = f", {OUTPUT_TRANSFORM_FILE}" if frame is not None and frame.moved else ""
    print(f"wrote {out}/ (standard checkpoint, transform.safetensors{extra}, README.md, symdsl.json)")
    return 0


def _spill_dir(args) -> Path | None:
    """Where ``align`` spills canonical tensors: ``--spill-dir``, else OUT's parent (on the disk that
    holds the output, not a memory file system), or nowhere with ``--no-spill``."""
    if args.no_spill:
        return None
    folder = Path(args.spill_dir) if args.spill_dir else Path(args.output).resolve().parent
    if not folder.is_dir():
        raise UsageError(f"--spill-dir '{folder}' is not a folder; give an existing folder on disk, or --no-spill")
    return folder


def _objective_text(result) -> str:
    """``objective 0.07106 at the start -> 0.02433 kept (what it measures), ``: the value of the transform
    kept (the best one, for matchers that keep the best of several), and the matcher's words for it."""
    objective = result.objective
    if not objective:
        return ""
    kept = result.info.get("kept_objective", objective[-1])
    means = result.info.get("objective_means", "the matcher's objective, lower is better")
    return f"objective {objective[0]:.4g} at the start -> {kept:.4g} kept ({means}), "


def run_merge(args) -> int:
    if len(args.models) < 2:
        raise UsageError("merge needs at least two models")
    merge_options(len(args.models), args.matcher, _options(args), refine=args.refine, pairwise=args.pairwise,
                  registries=args.registries)
    args.registries.mergers.lookup(args.merger)
    parse_input_shapes(args.inputs)
    check_weights(args.weights, len(args.models))
    _check_output(args, args.models)
    if args.plot:
        check_output_file(args.plot, inputs=args.models, option="--plot")
    models = [_load(args, ref) for ref in args.models]
    check_savable(models[0])
    universe = len(models) >= 3 and not args.pairwise
    if not universe and (args.refine or args.plot):
        raise UsageError("--refine and --plot apply to universe merges of three or more models")
    _join(args)
    if args.plot and distributed.active():   # the simplex surface is not sharded: every rank would write it
        raise UsageError("--plot is not supported under torchrun; draw the plot from one process")
    start = time.perf_counter()
    label = ("universe" + (" + refinement" if args.refine or args.matcher == "learned" else "")) if universe \
        else args.matcher
    with _progress(f"merge ({label})") as bar:
        merged = merge(models, args.spec, args.matcher, weights=args.weights, merger=args.merger, refine=args.refine,
                       pairwise=args.pairwise, plot=args.plot, **_common_kwargs(args, bar))
    seconds = time.perf_counter() - start
    if not distributed.is_main():          # rank 0 writes; every rank holds the same merged model
        return 0
    out = merged.save(args.output, {"command": "merge", "models": args.models, "seconds": seconds,
                                    "command_line": _command_line(args)}, overwrite=args.overwrite, dtype=args.dtype)
    method = merged.record["method"].replace("universe", "universe matching").replace("pairwise", f"{args.matcher} "
                                                                                      "matching")
    print(f"merged {len(models)} models ({method}, {args.merger}) in {seconds:.1f} s; wrote {out}/")
    if merged.details is not None:
        objective = merged.details.universe.objective
        print(f"  universe objective {objective[0]:.4g} -> {objective[-1]:.4g}")
        for label, surface in merged.details.surfaces.items():
            print(f"  {label:<26} max loss gap over the simplex {surface.summary()['max_loss_gap']:.3f}")
    if args.plot:
        print(f"wrote {args.plot} and {Path(args.plot).with_suffix('.json')}")
    return 0


def run_barrier(args) -> int:
    _check_matcher_options(args)
    inputs = [args.a, args.b, *([args.data[5:]] if (args.data or "").startswith("text:") else [])]
    for option, file in (("--json", args.json), ("--plot", args.plot)):
        if file:
            check_output_file(file, inputs=inputs, option=option)
    a, b = _load(args, args.a), _load(args, args.b)
    _join(args)
    with _progress(f"barrier ({args.matcher})") as bar:
        kwargs = _common_kwargs(args, bar)
        dataset = kwargs.pop("data")
        report = barrier(a, b, dataset, args.spec, args.matcher, points=args.points, split=args.split,
                         max_batches=args.max_batches, autocast=args.autocast, **kwargs)
    if not distributed.is_main():          # rank 0 prints and writes; every rank holds the same curves
        return 0
    spec = report.alignment.spec.name
    record = {"a": args.a, "b": args.b, "spec": spec, "data": dataset.name, "matcher": args.matcher,
              **report.alignment.info, **report.record()}
    print(f"{args.a} (lambda=1) <-> {args.b} (lambda=0) on {dataset.name} ({args.split}), spec {spec}")
    # accuracy barriers in percentage points, as in demo and the plots (the JSON keeps fractions)
    print(f"{'path':<22} {'loss barrier':>13} {'acc barrier (pts)':>18} {'loss barrier (mean def.)':>25}")
    for label in report.curves:
        paper, mean = report.barriers[label], report.barriers_mean[label]
        print(f"{label:<22} {paper.loss:>13.4f} {100 * paper.accuracy:>18.1f} {mean.loss:>25.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.plot:
        plot_curves(report.curves, args.plot, title=f"{spec}: {Path(args.a).name} vs {Path(args.b).name}")
        print(f"wrote {args.plot}")
    return 0
