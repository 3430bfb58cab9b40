"""Three digit ViTs merged through their universe: simplex surfaces and the centroid merge.

Trains (or reuses, from the cache ``symdsl demo`` uses) three small timm ViTs on sklearn's digits
with the ``DIGITS_VIT`` recipe, then compares four ways of aligning them before averaging:

- vanilla: no alignment;
- pairwise: weight matching of models 1 and 2 to model 0 separately (the two-model method, a reference);
- universe: universe weight matching (:func:`symdsl.match.universe.universe_match`);
- universe + refinement: the N transforms trained on the task loss, lambda ~ Dirichlet(0.1 * 1).

For each, the test loss and accuracy over the 2-simplex of the aligned models relative to the
planar baseline (maximum gap and gap at the centroid) and the centroid merge's test loss and
accuracy. Writes ``universe.json`` (the table and every surface) and ``universe-simplex.png``.

    python benchmarks/universe.py                      # seeds 0 1 2, resolution 12, 1000 refinement steps
    python benchmarks/universe.py --steps 300 --resolution 6 --out /some/folder
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from symdsl.act import act_state_dict
from symdsl.data import load_dataset
from symdsl.experiments.demo import cache_dir
from symdsl.evaluate import evaluate
from symdsl.evaluate.simplex import simplex_surface, surfaces_record
from symdsl.evaluate.simplex_plot import plot_simplex
from symdsl.api.universe_merge import merge_universe
from symdsl.models import load_model, save_model
from symdsl.api.pipeline import match, prepare
from symdsl.experiments.train import DIGITS_VIT, small_vit, train

HERE = Path(__file__).resolve().parent


def trained_vit(seed: int, dataset, say) -> torch.nn.Module:
    """The ``symdsl demo`` ViT for ``seed`` (same recipe and cache folder; trained once)."""
    folder = cache_dir() / f"vit-{dataset.name}-seed{seed}-steps{DIGITS_VIT['steps']}"
    if (folder / "symdsl.json").exists():
        say(f"model seed {seed}: cached")
        return load_model(str(folder))
    start = time.perf_counter()
    model = small_vit(dataset, seed=seed)
    metrics = train(model, dataset, seed=seed, **DIGITS_VIT)
    seconds = time.perf_counter() - start
    say(f"model seed {seed}: trained in {seconds:.0f} s, test loss {metrics['test_loss']:.3f}")
    record = {"command": "demo-train", "seed": seed, "data": dataset.name, "seconds": seconds,
              **{k: v for k, v in metrics.items() if k != "losses"}}
    save_model(model, folder, record, overwrite=True)    # our cache folder: replace what a crashed run left
    return model


def throttled(say):
    last: dict[str, float] = {}

    def progress(phase, done, total):
        now = time.perf_counter()
        if done == total or now - last.get(phase, 0.0) > 10.0:
            last[phase] = now
            say(f"  {phase}: {done}/{total}")
    return progress


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs=3, default=[0, 1, 2])
    parser.add_argument("--resolution", type=int, default=12, help="grid points per simplex edge minus one")
    parser.add_argument("--steps", type=int, default=1000, help="refinement steps")
    parser.add_argument("--alpha", type=float, default=0.1, help="Dirichlet concentration of the refinement")
    parser.add_argument("--out", default=str(HERE), help="folder for universe.json and universe-simplex.png")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    say = lambda text: print(text, flush=True)   # noqa: E731
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset("digits")
    models = [trained_vit(s, dataset, say) for s in args.seeds]
    progress = throttled(say)

    say("universe matching + refinement (symdsl.api.universe_merge.merge_universe)")
    png = out / "universe-simplex.png"
    merged = merge_universe(models, refine=True, dataset=dataset, surface_path=png, resolution=args.resolution,
                            progress=progress, refine_options={"alpha": args.alpha, "steps": args.steps})
    surfaces = dict(merged.surfaces)

    say("pairwise weight matching to model 0 (reference)")
    prepared = prepare(models)
    begun = time.perf_counter()
    pairwise = [prepared.states[0]] + [act_state_dict(prepared.resolved, prepared.states[i], match(prepared, i).elements)
                                       for i in (1, 2)]
    pairwise_seconds = time.perf_counter() - begun
    template = prepared.models[0]
    surfaces["pairwise weight matching"] = simplex_surface(template, pairwise, dataset, resolution=args.resolution,
                                                           labels=["model 0", "model 1", "model 2"])
    order = ["vanilla", "pairwise weight matching", "universe weight matching", "universe + refinement"]
    surfaces = {label: surfaces[label] for label in order}
    plot_simplex(surfaces, png, title=f"three digit ViTs (seeds {args.seeds}): test loss / accuracy over the "
                                      "simplex, relative to the planar baseline")

    merged_metrics = evaluate(merged.model, dataset)
    seconds = {"vanilla": 0.0, "pairwise weight matching": pairwise_seconds,
               "universe weight matching": merged.info["universe_seconds"],
               "universe + refinement": merged.info["universe_seconds"] + merged.info["refine_seconds"]}
    rows = []
    for label, surface in surfaces.items():
        s = surface.summary()
        rows.append({"method": label, "max_loss_gap": s["max_loss_gap"], "max_loss_gap_at": s["max_loss_gap_at"],
                     "centroid_loss_gap": s["centroid_loss_gap"], "max_accuracy_gap": s["max_accuracy_gap"],
                     "centroid_accuracy_gap": s["centroid_accuracy_gap"], "centroid_loss": s["centroid_loss"],
                     "centroid_accuracy": s["centroid_accuracy"], "align_seconds": seconds[label]})
    loss_v, acc_v = surfaces["vanilla"].vertices()
    record = {
        "format": "symdsl.benchmark-universe/1",
        "setup": {"seeds": args.seeds, "recipe": DIGITS_VIT, "resolution": args.resolution, "points":
                  len(surfaces["vanilla"].weights), "split": "test", "refine_steps": args.steps, "alpha": args.alpha,
                  "threads": 1},
        "models": [{"seed": s, "test_loss": l, "test_accuracy": a} for s, l, a in zip(args.seeds, loss_v, acc_v)],
        "rows": rows,
        "merged_model": merged_metrics,
        "universe": merged.universe.to_record() | {"info": {k: v for k, v in merged.universe.info.items()
                                                             if k != "steps"}},
        "refinement": {k: v for k, v in merged.refined.info.items() if k != "validation_points"},
        "surfaces": surfaces_record(surfaces),
    }
    (out / "universe.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    (out / "universe-simplex.json").unlink(missing_ok=True)   # merge_universe's 3-surface record: in universe.json
    say("")
    say(f"{'method':28s} {'max loss gap':>12s} {'centroid gap':>12s} {'max acc gap':>11s} "
        f"{'centroid loss':>13s} {'centroid acc':>12s} {'time':>7s}")
    for row in rows:
        say(f"{row['method']:28s} {row['max_loss_gap']:12.3f} {row['centroid_loss_gap']:12.3f} "
            f"{100 * row['max_accuracy_gap']:10.1f}% {row['centroid_loss']:13.3f} "
            f"{100 * row['centroid_accuracy']:11.1f}% {row['align_seconds']:6.1f}s")
    say(f"models: test loss {', '.join(f'{v:.3f}' for v in loss_v)}; "
        f"accuracy {', '.join(f'{100 * v:.1f}%' for v in acc_v)}")
    say(f"wrote {out / 'universe.json'} and {png}")
    return record


if __name__ == "__main__":
    main()
