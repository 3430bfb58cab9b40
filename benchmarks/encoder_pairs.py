"""Loss barriers of independently trained RoBERTa encoder pairs (masked-LM loss) per alignment method.

Usage (from the repository root, after ``pip install -e ".[all]"``)::

    python benchmarks/encoder_pairs.py                      # 1 pair of 2 x 64 RoBERTas on Tiny Shakespeare
    python benchmarks/encoder_pairs.py --pairs 3 --results  # ... 3 pairs, and rewrite the encoder section of RESULTS.md
    python benchmarks/encoder_pairs.py --train-only --seeds 0,2,4   # fill the model cache (one process per core)

Pair p is seeds 2p and 2p+1 of :func:`symdsl.experiments.train.small_roberta` (``--width``, 2 layers,
4 heads, 4 x width intermediate units, post-LayerNorm, decoder tied to the word embeddings),
trained with the ``CHAR_ROBERTA`` recipe on ``mlm:`` Tiny Shakespeare (characters, blocks of 64,
15 % of the positions chosen by BERT's 80/10/10 rule, train batches re-masked per pass; the
first ``--chars`` characters, 0: all of it, the default) and cached under ``$SYMDSL_CACHE/bench``
beside table1.py's pairs. Every curve is scored on the same fixed test masks (``mask_seed`` 0).
For each pair the test-loss barrier (paper definition, 11 points) is measured for: vanilla
averaging, activation matching, weight matching with permutations only and with every
symmetry of the shipped ``hf-roberta`` spec, and learned matching with permutations only and
with every symmetry (each starting from its weight-matching row; its time includes that
start). RoBERTa normalises after each residual addition, so its residual site is a
permutation in both rows: "full" adds the per-head invertible q/k and v/o maps. Prints a
table, writes JSON (``--json``) and, with ``--results``, the encoder section of
``benchmarks/RESULTS.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import DEFAULT_TEXT, ROOT, aligned_state, cache_root, machine_info, summarise, write_outputs  # noqa: E402,E501

SPEC = "hf-roberta"
# (row label, matcher, options)
METHODS = [
    ("vanilla averaging", None, {}),
    ("activation matching", "activation", {}),
    ("weight matching, permutations only", "weight", {"permutations_only": True}),
    ("weight matching, full", "weight", {}),
    ("learned matching, permutations only", "learned", {"permutations_only": True}),
    ("learned matching, full", "learned", {}),
]
# A "## " heading of its own: replace_section ends a section at the next "## ", so the Llama "### "
# section above and this one are each rewritten without touching the other.
HEADING = "## Encoder pairs: RoBERTa (2 layers, 4 heads, post-LN), masked-LM loss (`benchmarks/encoder_pairs.py`)"


def model_folder(seed: int, dataset, width: int, chars: int | None) -> Path:
    """Where the model of ``seed`` is cached: the name says data, width, seed and recipe size."""
    from symdsl.experiments.train import CHAR_ROBERTA as recipe

    return cache_root() / (f"roberta-{dataset.name}-chars{chars or 'all'}-w{width}-seed{seed}-steps{recipe['steps']}"
                           f"-b{recipe['batch_size']}")


def trained(seed: int, dataset, width: int, chars: int | None, say) -> tuple[torch.nn.Module, dict]:
    """A RoBERTa trained with CHAR_ROBERTA from ``seed`` (cached) and its recorded metrics."""
    from symdsl.models import load_model, save_model
    from symdsl.experiments.train import CHAR_ROBERTA, small_roberta, train

    recipe = CHAR_ROBERTA
    folder = model_folder(seed, dataset, width, chars)
    record = folder / "symdsl.json"
    if record.exists():
        return load_model(str(folder)), json.loads(record.read_text())
    model = small_roberta(dataset, hidden_size=width, intermediate_size=4 * width, seed=seed)
    say(f"    training seed {seed} ({recipe['steps']} steps) ...")
    metrics = train(model, dataset, seed=seed, **recipe)
    losses = metrics.pop("losses")
    say(f"    trained seed {seed} in {metrics['seconds']:.0f} s: test loss {metrics['test_loss']:.3f}, "
        f"masked accuracy {metrics['test_accuracy']:.3f}")
    save_model(model, folder, {"command": "encoder_pairs-train", "seed": seed, "data": dataset.name, "chars": chars,
                               "width": width, "recipe": recipe, "loss_every_100": losses[::100], **metrics})
    return model, json.loads(record.read_text())


def measure_pair(models, dataset, learn_steps: int, say) -> dict[str, dict]:
    """Barriers of every method on one pair: label -> {loss, accuracy, seconds, curve}."""
    from symdsl.api import find_spec
    from symdsl.api.pipeline import prepare
    from symdsl.evaluate import barrier, loss_curve

    p = prepare(models, find_spec(SPEC))
    starts: dict[bool, tuple] = {}   # permutations_only -> (weight-matching result, seconds)
    out = {}
    for label, matcher, options in METHODS:
        key = options.get("permutations_only", False)
        state_b, seconds = aligned_state(p, matcher, options, dataset, learn_steps, starts, key)
        curve = loss_curve(p.models[0], p.states[0], state_b, dataset)
        b = barrier(curve)
        out[label] = {"loss": b.loss, "accuracy": b.accuracy, "seconds": seconds, "curve": curve.loss,
                      "accuracy_curve": curve.accuracy}
        say(f"    {label}: loss barrier {b.loss:.3f}, accuracy barrier {100 * b.accuracy:.1f} points ({seconds:.1f} s)")
    return out


def markdown(block: dict, machine: dict, command: str) -> str:
    pairs = block["pairs"]
    ends = "; ".join(f"seeds {2 * i}/{2 * i + 1}: {a:.3f}/{b:.3f}" for i, (a, b) in enumerate(block["test_loss"]))
    accs = "; ".join(f"{100 * a:.1f}/{100 * b:.1f} %" for a, b in block["test_accuracy"])
    lines = [f"`{command}`: {pairs} independent pair{'s' if pairs > 1 else ''} of 2 x {block['width']} RoBERTa "
             f"masked-LM encoders (seeds 0-1, 2-3, ...) trained with `CHAR_ROBERTA` on {block['corpus']} "
             f"(`mlm:`, characters, blocks of {block['block_size']}, 15 % masked by BERT's 80/10/10 rule, dynamic "
             f"train masks); endpoint test losses {ends} (masked-position accuracy {accs}) against a unigram "
             f"baseline of {block['unigram']:.3f}. Test-loss barrier over the fixed test masks (paper definition, "
             "11 points); accuracy barrier in points (mean); align time per pair (learned rows include their "
             f"weight-matching start). Learned matching: {block['learn_steps']} steps, default options. "
             "RoBERTa is post-LayerNorm: the residual stream's site is a permutation in every row, so \"full\" "
             "adds the per-head invertible q/k and v/o maps to the permutations, not a residual rotation.", "",
             "| method | " + " | ".join(f"pair {i} (seeds {2 * i}, {2 * i + 1})" for i in range(pairs)) +
             " | mean ± std | accuracy barrier | align time |",
             "|---|" + "---|" * (pairs + 3)]
    for label, row in block["rows"].items():
        lines.append(f"| {label} | " + " | ".join(f"{x:.3f}" for x in row["loss"]) +
                     f" | {row['loss_mean']:.3f} ± {row['loss_std']:.3f} | {100 * row['accuracy_mean']:.1f} | "
                     f"{row['seconds_mean']:.1f} s |")
    lines += ["", f"Machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, one intra-op thread, "
              f"load average at the start {machine['load']}; {machine['seconds']:.0f} s in all (training included "
              "where the cache was empty).", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    from symdsl.data import load_dataset
    from symdsl.evaluate.baselines import unigram_loss

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=1)
    parser.add_argument("--width", type=int, default=64, help="residual width (2 layers; default 64)")
    parser.add_argument("--chars", type=int, default=0,
                        help="train and test on the first N characters of the corpus (0: all, the default)")
    parser.add_argument("--learn-steps", type=int, default=500)
    parser.add_argument("--text", default=str(DEFAULT_TEXT), help="corpus (default: Tiny Shakespeare)")
    parser.add_argument("--train-only", action="store_true", help="only train (and cache) the models of --seeds")
    parser.add_argument("--seeds", default=None, help="with --train-only: comma-separated seeds (default: all pairs')")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "encoder_pairs.json"))
    parser.add_argument("--results", action="store_true", help="rewrite the encoder section of benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    if not Path(args.text).is_file():
        raise SystemExit(f"corpus '{args.text}' not found; pass --text PATH")
    torch.set_num_threads(1)   # tiny models: one thread is fastest, and robust on a shared CPU
    load = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    started = time.perf_counter()
    say = lambda line: print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)
    chars = args.chars or None
    dataset = load_dataset(f"mlm:{args.text}", **({"max_chars": chars} if chars else {}))
    corpus = f"the first {chars:,} characters of {Path(args.text).name}" if chars else f"all of {Path(args.text).name}"
    if args.train_only:
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else range(2 * args.pairs)
        for seed in seeds:
            trained(seed, dataset, args.width, chars, say)
        return 0
    say(f"RoBERTa 2 x {args.width} on {corpus}: {args.pairs} pairs")
    per_pair, test_loss, test_accuracy = [], [], []
    for pair in range(args.pairs):
        say(f"  pair {pair + 1}/{args.pairs} (seeds {2 * pair}, {2 * pair + 1})")
        loaded = [trained(seed, dataset, args.width, chars, say) for seed in (2 * pair, 2 * pair + 1)]
        test_loss.append([record["test_loss"] for _, record in loaded])
        test_accuracy.append([record["test_accuracy"] for _, record in loaded])
        # a pair's rows are cached beside its models (keyed by both models and the learned steps), so a
        # run with more pairs measures only the new ones; delete the file to measure a pair again
        measured = model_folder(2 * pair, dataset, args.width, chars).with_name(
            f"{model_folder(2 * pair + 1, dataset, args.width, chars).name}-pair-learn{args.learn_steps}.json")
        if measured.exists():
            per_pair.append(json.loads(measured.read_text()))
            say(f"    measured before: {measured}")
        else:
            per_pair.append(measure_pair([model for model, _ in loaded], dataset, args.learn_steps, say))
            measured.write_text(json.dumps(per_pair[-1]) + "\n")
    rows = summarise(per_pair)
    block = {"dataset": dataset.name, "corpus": corpus, "chars": chars, "width": args.width, "pairs": args.pairs,
             "block_size": dataset.block_size, "unigram": unigram_loss(dataset), "learn_steps": args.learn_steps,
             "test_loss": test_loss, "test_accuracy": test_accuracy, "rows": rows, "per_pair": per_pair}
    machine = machine_info(time.perf_counter() - started, load)
    say(f"\ntest-loss barrier per pair, mean ± std over {args.pairs} pairs")
    for label, row in rows.items():
        say(f"  {label:<40} {' '.join(f'{x:6.3f}' for x in row['loss'])}   {row['loss_mean']:.3f} ± {row['loss_std']:.3f}"
            f"   accuracy {100 * row['accuracy_mean']:.1f}")
    command = "python benchmarks/encoder_pairs.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_outputs({"results": block, "machine": machine}, args.json, say,
                  (HEADING, markdown(block, machine, command.strip())) if args.results else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
