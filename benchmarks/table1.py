"""The paper's Table 1 on models trained here: test-loss barriers per alignment method, mean ± std over pairs.

Usage (from the repository root, after ``pip install -e ".[all]"``)::

    python benchmarks/table1.py                       # ViT on digits and GPT-2 on Tiny Shakespeare, 3 pairs each
    python benchmarks/table1.py --tasks vit --pairs 5 --learn-steps 500
    python benchmarks/table1.py --text PATH           # GPT-2 on another corpus
    python benchmarks/table1.py --tasks gpt2 --tokenizer ../shared/data/gpt2_tokenizer   # GPT-2 BPE

Every pair is two models trained from different seeds with the recipes of ``symdsl.experiments.train``
(cached under ``$SYMDSL_CACHE/bench``, so a second run only re-measures). For each pair the
barrier of the straight line between A and aligned B is measured on the test split (paper
definition, 11 points) for: vanilla averaging, activation matching, weight matching with
permutations only, weight matching with every symmetry on the standard architecture (symdsl's
route: checkpoints stay standard), the same on the paper's architecture-changing routes
(LayerNorm -> RMSNorm; RMSNorm + attention heads as QK/OV circuits), learned matching with
permutations only, and full learned matching on the standard and the circuit route. Prints the table, writes JSON
(``--json``) and, with ``--results``, the Markdown section of ``benchmarks/RESULTS.md``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import DEFAULT_TEXT, ROOT, aligned_state, cache_root, machine_info, summarise, write_outputs  # noqa: E402,E501

# (row label, matcher, options, spec route); route None = the registry's standard spec
METHODS = [
    ("vanilla averaging", None, {}, None),
    ("activation matching", "activation", {}, None),
    ("weight matching, permutations only", "weight", {"permutations_only": True}, None),
    ("weight matching, full (standard architecture)", "weight", {}, None),
    ("weight matching, full (paper route: RMSNorm)", "weight", {}, "rmsnorm"),
    ("weight matching, full (paper route: RMSNorm + circuits)", "weight", {}, "circuits"),
    ("learned matching, permutations only", "learned", {"permutations_only": True}, None),
    ("learned matching, full (standard architecture)", "learned", {}, None),
    ("learned matching, full (paper route: RMSNorm + circuits)", "learned", {}, "circuits"),
]
SPECS = {"vit": {None: "timm-vit", "rmsnorm": "timm-vit-rmsnorm", "circuits": "timm-vit-circuits"},
         "gpt2": {None: "hf-gpt2", "rmsnorm": "hf-gpt2-rmsnorm", "circuits": "hf-gpt2-circuits"}}
# Theus et al. 2025, Table 1 (test-loss barrier): CIFAR-10 column for the ViT, Tiny Shakespeare for GPT-2.
PAPER = {"vit": {"vanilla averaging": 1.69, "activation matching": 1.27,
                 "weight matching, full (paper route: RMSNorm + circuits)": 0.36,
                 "learned matching, permutations only": 0.45,
                 "learned matching, full (paper route: RMSNorm + circuits)": 0.00},
         "gpt2": {"vanilla averaging": 2.02, "activation matching": 1.43,
                  "weight matching, full (paper route: RMSNorm + circuits)": 0.34,
                  "learned matching, permutations only": 0.63,
                  "learned matching, full (paper route: RMSNorm + circuits)": 0.02}}


def trained(task: str, seed: int, dataset, say) -> torch.nn.Module:
    """A model of ``task`` trained with its recipe from ``seed`` (cached)."""
    from symdsl.models import load_model, save_model
    from symdsl.experiments.train import CHAR_GPT2, DIGITS_VIT, small_gpt2, small_vit, train

    recipe = DIGITS_VIT if task == "vit" else CHAR_GPT2
    tokens = "-bpe" if type(dataset.tokenizer).__name__ == "BPETokenizer" else ""
    folder = cache_root() / f"{task}-{dataset.name}{tokens}-seed{seed}-steps{recipe['steps']}"
    if (folder / "symdsl.json").exists():
        return load_model(str(folder))
    model = small_vit(dataset, seed=seed) if task == "vit" else small_gpt2(dataset, seed=seed)
    started = time.perf_counter()
    metrics = train(model, dataset, seed=seed, **recipe)
    say(f"    trained {task} seed {seed} in {time.perf_counter() - started:.0f} s: test loss {metrics['test_loss']:.3f}")
    record = {"command": "table1-train", "seed": seed, "data": dataset.name,
              **{k: v for k, v in metrics.items() if k != "losses"}}
    save_model(model, folder, record, overwrite=True)    # our cache folder
    return model


def measure_pair(task: str, models, dataset, learn_steps: int, say) -> dict[str, dict]:
    """Barriers of every method on one pair: label -> {loss, accuracy, seconds}."""
    from symdsl.api.pipeline import prepare
    from symdsl.evaluate import barrier, loss_curve

    prepared = {route: prepare(models, SPECS[task][route]) for route in SPECS[task]}
    starts: dict[tuple, tuple] = {}   # (route, permutations_only) -> (weight-matching result, seconds)
    out = {}
    for label, matcher, options, route in METHODS:
        p = prepared[route]
        key = (route, options.get("permutations_only", False))
        state_b, seconds = aligned_state(p, matcher, options, dataset, learn_steps, starts, key)
        b = barrier(loss_curve(p.models[0], p.states[0], state_b, dataset))
        out[label] = {"loss": b.loss, "accuracy": b.accuracy, "seconds": seconds}
        say(f"    {label}: loss barrier {b.loss:.3f} ({seconds:.1f} s)")
    return out


def markdown(results: dict, machine: dict) -> str:
    lines = []
    for task, block in results.items():
        name = {"vit": "ViT (2 layers x 64, 4 heads) on sklearn digits",
                "gpt2": f"GPT-2 (2 layers x 64, 4 heads), characters of {block['dataset']}"}[task]
        paper_col = {"vit": "paper, CIFAR-10 ViT", "gpt2": "paper, Tiny Shakespeare GPT-2"}[task]
        lines += [f"### {name}", "", f"{block['pairs']} independent pairs (seeds 0-1, 2-3, ...), test-loss barrier "
                  "(paper definition, 11 points), mean ± std over pairs; accuracy barrier in points; align time per pair.",
                  "", f"| method | loss barrier | accuracy barrier | align time | {paper_col} |", "|---|---|---|---|---|"]
        for label, row in block["rows"].items():
            paper = PAPER[task].get(label)
            lines.append(f"| {label} | {row['loss_mean']:.3f} ± {row['loss_std']:.3f} | "
                         f"{100 * row['accuracy_mean']:.1f} | {row['seconds_mean']:.1f} s | "
                         f"{'' if paper is None else f'{paper:.2f}'} |")
        lines.append("")
    lines += [f"Machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, one intra-op thread, "
              f"load average at the start {machine['load']}; {machine['seconds']:.0f} s in all.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    from symdsl.data import load_dataset

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default="vit,gpt2", help="comma-separated: vit, gpt2")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--learn-steps", type=int, default=1000)
    parser.add_argument("--text", default=str(DEFAULT_TEXT), help="GPT-2 corpus (default: Tiny Shakespeare)")
    parser.add_argument("--tokenizer", default=None, help="GPT-2 BPE tokenizer folder (default: characters)")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "table1.json"))
    parser.add_argument("--results", action="store_true", help="rewrite the Table 1 section of benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)   # tiny models: one thread is fastest, and robust on a shared CPU
    load = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    started = time.perf_counter()
    say = lambda line: print(line, flush=True)
    results = {}
    for task in args.tasks.split(","):
        tokens = {"tokenizer": args.tokenizer} if args.tokenizer else {}
        dataset = load_dataset("digits") if task == "vit" else load_dataset(f"text:{args.text}", **tokens)
        say(f"{task} on {dataset.name}: {args.pairs} pairs")
        per_pair = []
        for pair in range(args.pairs):
            say(f"  pair {pair + 1}/{args.pairs} (seeds {2 * pair}, {2 * pair + 1})")
            models = [trained(task, seed, dataset, say) for seed in (2 * pair, 2 * pair + 1)]
            per_pair.append(measure_pair(task, models, dataset, args.learn_steps, say))
        results[task] = {"dataset": dataset.name, "pairs": args.pairs, "rows": summarise(per_pair), "per_pair": per_pair}
    machine = machine_info(time.perf_counter() - started, load)
    for task, block in results.items():
        say(f"\n{task}: test-loss barrier, mean ± std over {block['pairs']} pairs")
        for label, row in block["rows"].items():
            say(f"  {label:<58} {row['loss_mean']:.3f} ± {row['loss_std']:.3f}")
    section = ("## Table 1: loss barriers on models trained here", markdown(results, machine))
    write_outputs({"results": results, "machine": machine, "learn_steps": args.learn_steps}, args.json, say,
                  section if args.results else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
