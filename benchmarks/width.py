"""Width-heterogeneous alignment on real trained models: a narrow ViT lifted into a wide ViT's space.

Trains a wide timm ViT (embed_dim 128, 4 heads) and narrow ones (embed_dim 64 and 32, fewer heads or
smaller head dims) on sklearn's digits,
lifts each narrow model into the wide configuration (same function, checked here on the test
split), and reports the test-loss barrier (paper definition) of the straight line from the wide
model to the lifted narrow model: vanilla (no matching), weight matching in the wide space, and
learned matching with lam ~ U(0.2, 0.5) (the wide model's weight).

    python benchmarks/width.py --cache runs/width    # 10-15 minutes on 2 CPU cores; trained models kept
    python benchmarks/width.py --learned-steps 200   # quicker, smaller learned gain

A pair whose alignment raises is reported as failed (with the error) and the others still run.

Prints a table and writes benchmarks/width.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from symdsl.data import load_dataset
from symdsl.evaluate import barrier, evaluate, loss_curve
from symdsl.models import load_model, save_model
from symdsl.api.pipeline import match
from symdsl.experiments.train import DIGITS_VIT, small_vit, train
from symdsl.api.widths import LIFT_LAM, align_widths


def trained(dataset, embed_dim: int, num_heads: int, seed: int, cache: str | None = None):
    folder = Path(cache) / f"vit-{embed_dim}x{num_heads}-seed{seed}" if cache else None
    if folder is not None and (folder / "model.safetensors").exists():
        print(f"  loaded {folder}", flush=True)
        return load_model(str(folder)).eval()
    start = time.perf_counter()
    model = small_vit(dataset, embed_dim=embed_dim, num_heads=num_heads, seed=seed)
    metrics = train(model, dataset, seed=seed, **DIGITS_VIT)
    print(f"  trained ViT embed_dim={embed_dim} heads={num_heads} seed={seed}: test loss "
          f"{metrics['test_loss']:.3f}, accuracy {metrics['test_accuracy']:.3f} ({time.perf_counter() - start:.0f} s)",
          flush=True)
    if folder is not None:
        save_model(model, folder, overwrite=True)   # a cache folder of ours
    return model.eval()


def run_pair(dataset, wide, narrow_spec, args) -> dict:
    dim, heads = narrow_spec
    narrow = trained(dataset, dim, heads, seed=args.narrow_seed, cache=args.cache)
    row = {"narrow": {"embed_dim": dim, "num_heads": heads, "seed": args.narrow_seed},
           "wide": {"embed_dim": args.wide_dim, "num_heads": args.wide_heads, "seed": args.wide_seed}}
    start = time.perf_counter()
    aligned = align_widths(wide, narrow, matcher="weight")
    row["weight_seconds"] = time.perf_counter() - start
    lifted_model = aligned.lifted.model
    row["narrow_test"] = evaluate(narrow, dataset)
    row["lifted_test"] = evaluate(lifted_model, dataset)
    row["wide_test"] = evaluate(wide, dataset)
    row["lift"] = aligned.lifted.to_record()
    template = aligned.prepared.models[0]
    curves = {"vanilla": loss_curve(template, aligned.wide_state, aligned.lifted_state, dataset),
              "weight": loss_curve(template, aligned.wide_state, aligned.aligned, dataset)}
    if args.learned_steps > 0:
        start = time.perf_counter()
        # starts from the weight-matching transform above instead of computing it again
        result = match(aligned.prepared, 1, "learned", data=dataset, lam=LIFT_LAM, steps=args.learned_steps,
                       start=aligned.result.elements, progress=_progress("learned") if args.verbose else None)
        row["learned_seconds"] = time.perf_counter() - start
        from symdsl.act import act_state_dict

        learned_state = act_state_dict(aligned.prepared.resolved, aligned.lifted_state, result.elements)
        curves["learned"] = loss_curve(template, aligned.wide_state, learned_state, dataset)
    row["barriers"] = {name: barrier(curve).to_dict() for name, curve in curves.items()}
    row["curves"] = {name: curve.to_dict() for name, curve in curves.items()}
    return row


def _progress(name):
    def report(phase, done, total):
        if done == total or done % 100 == 0:
            print(f"    {name} {phase}: {done}/{total}", flush=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wide-dim", type=int, default=128)
    parser.add_argument("--wide-heads", type=int, default=4)
    parser.add_argument("--narrow", default="64x2,32x1,64x4,32x2", help="narrow models as EMBEDxHEADS, comma-separated")
    parser.add_argument("--wide-seed", type=int, default=0)
    parser.add_argument("--narrow-seed", type=int, default=1)
    parser.add_argument("--learned-steps", type=int, default=1000)
    parser.add_argument("--out", default=str(Path(__file__).with_name("width.json")))
    parser.add_argument("--cache", default=None, help="folder to keep trained models in (reused when present)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dataset = load_dataset("digits")
    wide = trained(dataset, args.wide_dim, args.wide_heads, seed=args.wide_seed, cache=args.cache)
    rows = []
    for item in args.narrow.split(","):
        dim, heads = (int(v) for v in item.lower().split("x"))
        print(f"pair: narrow {dim}x{heads} -> wide {args.wide_dim}x{args.wide_heads}", flush=True)
        try:
            rows.append(run_pair(dataset, wide, (dim, heads), args))
        except Exception as exc:   # reported, not hidden: the table shows which pair failed and why
            print(f"  failed: {type(exc).__name__}: {str(exc).splitlines()[0]}", flush=True)
            rows.append({"narrow": {"embed_dim": dim, "num_heads": heads, "seed": args.narrow_seed},
                         "wide": {"embed_dim": args.wide_dim, "num_heads": args.wide_heads, "seed": args.wide_seed},
                         "error": f"{type(exc).__name__}: {exc}"})
    print()
    print(f"{'narrow -> wide':<16}{'lift |dloss|':>14}{'vanilla':>10}{'weight':>10}{'learned':>10}   (test-loss barrier)")
    for row in rows:
        name = f"{row['narrow']['embed_dim']}x{row['narrow']['num_heads']} -> {row['wide']['embed_dim']}x{row['wide']['num_heads']}"
        if "error" in row:
            print(f"{name:<16}  failed: {row['error'].splitlines()[0][:90]}")
            continue
        b = row["barriers"]
        gap = abs(row["lifted_test"]["loss"] - row["narrow_test"]["loss"])
        learned = f"{b['learned']['loss']:10.3f}" if "learned" in b else f"{'-':>10}"
        print(f"{name:<16}{gap:14.2e}{b['vanilla']['loss']:10.3f}{b['weight']['loss']:10.3f}{learned}")
    record = {"benchmark": "width", "dataset": "digits", "train": DIGITS_VIT, "learned_steps": args.learned_steps,
              "lam": LIFT_LAM, "torch": torch.__version__, "pairs": rows}
    Path(args.out).write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
