"""``symdsl demo``: the whole pipeline on real data, in minutes on a laptop CPU.

Trains two small models from different seeds (cached, so only the first run trains), then
measures the loss and accuracy barrier of the straight line between them for each way of
aligning them: none (vanilla averaging), activation matching, weight matching with
permutations only and with the full symmetry set of the spec, and learned matching (trained on
the interpolated model's loss, started from the weight-matching solution) likewise.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..act import act_state_dict
from ..paths import cache_root
from ..evaluate import barrier, loss_curve, plot_curves
from ..models import load_model, save_model
from ..api.pipeline import match, prepare
from ..threads import torch_threads

RECIPES = {
    "vit": {"data": "digits", "label": "ViT (2 layers, 64 wide, 4 heads) on sklearn digits"},
    "gpt2": {"data": "stdlib-text", "label": "GPT-2 (2 layers, 64 wide, 4 heads), characters"},
}
METHODS = [  # (label, matcher, options)
    ("vanilla averaging", None, {}),
    ("activation matching", "activation", {}),
    ("weight matching, permutations only", "weight", {"permutations_only": True}),
    ("weight matching, full symmetries", "weight", {}),
    ("learned matching, permutations only", "learned", {"permutations_only": True}),
    ("learned matching, full symmetries", "learned", {}),
]


def cache_dir() -> Path:
    return cache_root() / "demo"


@dataclass
class Row:
    method: str
    loss_barrier: float
    accuracy_barrier: float
    seconds: float


def _trained(kind: str, seed: int, dataset, steps: int | None, say: Callable[[str], None]):
    from .train import CHAR_GPT2, DIGITS_VIT, small_gpt2, small_vit, train
    from .train.recipes import with_steps

    recipe = with_steps(DIGITS_VIT if kind == "vit" else CHAR_GPT2, steps)
    folder = cache_dir() / f"{kind}-{dataset.name}-seed{seed}-steps{recipe['steps']}"
    if (folder / "symdsl.json").exists():
        say(f"  model seed {seed}: cached ({folder})")
        return load_model(str(folder))
    model = small_vit(dataset, seed=seed) if kind == "vit" else small_gpt2(dataset, seed=seed)
    start = time.perf_counter()
    last = [0]

    def progress(done, total):
        if done - last[0] >= total // 4 or done == total:
            last[0] = done
            say(f"  model seed {seed}: step {done}/{total}")

    metrics = train(model, dataset, seed=seed, progress=progress, **recipe)
    seconds = time.perf_counter() - start
    say(f"  model seed {seed}: trained in {seconds:.0f} s, test loss {metrics['test_loss']:.3f}, "
        f"accuracy {100 * metrics['test_accuracy']:.1f}%")
    record = {"command": "demo-train", "seed": seed, "data": dataset.name, "seconds": seconds,
              **{k: v for k, v in metrics.items() if k != "losses"}}
    save_model(model, folder, record, overwrite=True)    # our cache folder: replace what a crashed run left
    return model


def _every_quarter(label: str, say: Callable[[str], None]) -> Callable[[str, int, int], None]:
    """Progress lines at 25 %, 50 %, 75 % and 100 % of a long phase."""
    shown = [0]

    def progress(phase: str, done: int, total: int) -> None:
        if done * 4 >= (shown[0] + 1) * total:
            shown[0] = done * 4 // total
            say(f"  {label}: step {done}/{total}")

    return progress


def table_lines(rows) -> list[str]:
    """The results table ``symdsl demo`` prints (rows: :class:`Row` or their dicts, as in demo.json).

    >>> table_lines([{"method": "vanilla averaging", "loss_barrier": 3.3717, "accuracy_barrier": 0.853,
    ...               "seconds": 0.0}])[1]
    '  vanilla averaging         3.372                85.3        0.0s'
    """
    rows = [r if isinstance(r, dict) else r.__dict__ for r in rows]
    width = max(len(r["method"]) for r in rows)
    lines = [f"  {'method':<{width}}  {'loss barrier':>12}  {'acc. barrier (pts)':>18}  {'align time':>10}"]
    lines += [f"  {r['method']:<{width}}  {r['loss_barrier']:>12.3f}  {100 * r['accuracy_barrier']:>18.1f}  "
              f"{r['seconds']:>9.1f}s" for r in rows]
    return lines


def run_demo(kind: str = "vit", *, output: str | Path = "symdsl-demo", data: str | None = None,
             steps: int | None = None, learn_steps: int | None = None, seeds=(0, 1),
             say: Callable[[str], None] = print) -> dict:
    """Train (or load cached) models, align them every way, and report barriers. Returns the record."""
    from ..data import load_dataset

    started = time.perf_counter()
    recipe = RECIPES[kind]
    dataset = load_dataset(data or recipe["data"])
    say(f"symdsl demo: {recipe['label']}, dataset {dataset.name}")
    say("1/3 training two models from different seeds")
    models = [_trained(kind, seed, dataset, steps, say) for seed in seeds]
    say("2/3 canonicalizing and aligning B to A")
    with torch_threads(1):   # tiny models: one thread is faster, and far faster on a shared CPU
        return _align_and_report(kind, recipe, dataset, models, output, learn_steps, seeds, started, say)


def _align_and_report(kind, recipe, dataset, models, output, learn_steps, seeds, started, say) -> dict:
    prepared = prepare(models)
    say(f"  spec {prepared.spec.name}: {len(prepared.resolved.sites)} sites")
    curves, rows = {}, []
    weight_results: dict[bool, tuple] = {}   # permutations_only -> (weight-matching result, seconds)
    for label, matcher, options in METHODS:
        start = time.perf_counter()
        if matcher is None:
            state_b = prepared.states[1]
        else:
            extra = {}
            if matcher == "learned":   # start from the weight-matching row's solution instead of recomputing it
                found, found_seconds = weight_results[options.get("permutations_only", False)]
                extra = {"start": found.elements, "progress": _every_quarter(label, say)}
                if learn_steps is not None:
                    extra["steps"] = learn_steps
                start -= found_seconds   # the learned row's time includes its weight-matching start
            result = match(prepared, 1, matcher, data=dataset, **options, **extra)
            if matcher == "weight":
                weight_results[options.get("permutations_only", False)] = (result, time.perf_counter() - start)
            state_b = act_state_dict(prepared.resolved, prepared.states[1], result.elements)
        align_seconds = time.perf_counter() - start
        curves[label] = loss_curve(prepared.models[0], prepared.states[0], state_b, dataset)
        b = barrier(curves[label])
        rows.append(Row(label, b.loss, b.accuracy, align_seconds))
        say(f"  {label}: loss barrier {b.loss:.3f} (aligned in {align_seconds:.1f} s)")
    say("3/3 results (test split; barrier = max over lambda of loss minus the endpoints' line)")
    for line in table_lines(rows):
        say(line)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    plot_curves(curves, out / "curves.png", title=f"symdsl demo: {recipe['label']}")
    record = {"demo": kind, "dataset": dataset.name, "spec": prepared.spec.name, "seeds": list(seeds),
              "rows": [r.__dict__ for r in rows], "curves": {k: c.to_dict() for k, c in curves.items()},
              "seconds": time.perf_counter() - started, "torch_threads": torch.get_num_threads()}
    (out / "demo.json").write_text(json.dumps(record, indent=2) + "\n")
    say(f"wrote {out / 'curves.png'} and {out / 'demo.json'} ({record['seconds']:.0f} s in all)")
    return record
