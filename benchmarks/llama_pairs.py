"""Loss barriers of independently trained Llama pairs (GQA, RoPE, SwiGLU) per alignment method.

Usage (from the repository root, after ``pip install -e ".[all]"``)::

    python benchmarks/llama_pairs.py                      # 2 pairs of 2 x 64 models, first 50,000 characters
    python benchmarks/llama_pairs.py --pairs 3 --results  # ... 3 pairs, and rewrite the Llama section of RESULTS.md
    python benchmarks/llama_pairs.py --chars 0            # on the whole corpus (the models do not memorise it)

Pair p is seeds 2p and 2p+1 of :func:`symdsl.experiments.train.small_llama` (``--width``, 2 layers,
4 query / 2 key-value heads, tied embeddings), trained with the ``CHAR_LLAMA`` recipe on the
characters of Tiny Shakespeare (the first ``--chars``, default 50,000, so that the endpoints
memorise their data as the paper's do; 0: all of it) and cached under
``$SYMDSL_CACHE/bench`` beside table1.py's pairs. For each pair the test-loss barrier (paper
definition, 11 points) is measured for: vanilla averaging, activation matching, weight matching
with permutations only, weight matching with every symmetry but the rotary q/k maps (the shipped
``hf-llama`` spec with its ``qk`` sites taken out, i.e. held at the identity), weight matching with
every symmetry, and learned matching with permutations only and with every symmetry (each
starting from its weight-matching row; its time includes that start). Prints a table, writes
JSON (``--json``) and, with ``--results``, the Llama section of ``benchmarks/RESULTS.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import DEFAULT_TEXT, ROOT, aligned_state, cache_root, machine_info, summarise, write_outputs  # noqa: E402,E501

SPEC = "hf-llama"
HELD = "qk."   # the rotary q/k sites: the one symmetry RoPE adds, and the row that measures it
# Learned matching's options on these pairs (see docs/benchmarks.md for what was measured);
# every other option is the matcher's default.
LEARNED: dict = {}
# (row label, matcher, options, spec variant: None = the shipped spec, "held" = without its HELD sites)
METHODS = [
    ("vanilla averaging", None, {}, None),
    ("activation matching", "activation", {}, None),
    ("weight matching, permutations only", "weight", {"permutations_only": True}, None),
    ("weight matching, full without the rotary q/k maps", "weight", {}, "held"),
    ("weight matching, full", "weight", {}, None),
    ("learned matching, permutations only", "learned", {"permutations_only": True}, None),
    ("learned matching, full", "learned", {}, None),
]
HEADING = "### Llama (2 layers, 4 query / 2 key-value heads, RoPE, SwiGLU, tied embeddings): `benchmarks/llama_pairs.py`"


def without_sites(spec, prefix: str):
    """``spec`` with every site whose name starts with ``prefix`` taken out: each place a tensor
    pattern names such a site gets the site's size (an unbound dimension) instead, so the
    matchers hold it at the identity and every other site is unchanged.

    >>> from symdsl.api import find_spec
    >>> held = without_sites(find_spec("hf-llama"), "qk.")
    >>> sorted(held.document.sites)[:3], held.name
    (['kv.${i}', 'mlp.${i}', 'ov.${i}'], 'hf-llama-without-qk.')
    >>> import symdsl
    >>> symdsl.check(held).ok   # the symmetries left are still exact on the spec's example model
    True
    """
    import yaml
    from symdsl.spec import load_spec_text

    document = yaml.safe_load(Path(spec.file).read_text())
    gone = {name: site["size"] for name, site in document["sites"].items() if name.startswith(prefix)}
    if not gone:
        raise SystemExit(f"spec '{spec.name}' has no site starting with '{prefix}'")
    # A site reference is the name, optionally dual ('), up to a space or a closing parenthesis.
    reference = re.compile("|".join(re.escape(name) for name in gone) + r"'?(?=[\s)]|$)")

    def strip(pattern: str) -> str:
        return reference.sub(lambda m: str(gone[m.group(0).rstrip("'")]), pattern)

    document["sites"] = {k: v for k, v in document["sites"].items() if k not in gone}
    document["tensors"] = {k: strip(v) for k, v in document["tensors"].items()}
    for head in (document.get("heads") or {}).values():
        head["tensors"] = {k: strip(v) for k, v in (head.get("tensors") or {}).items()}
    document["name"] = f"{spec.name}-without-{prefix}"
    return load_spec_text(yaml.safe_dump(document, sort_keys=False), file=f"{spec.file} (without {prefix})")


def trained(seed: int, dataset, width: int, chars: int | None, say) -> tuple[torch.nn.Module, dict]:
    """A Llama trained with CHAR_LLAMA from ``seed`` (cached) and its recorded metrics."""
    from symdsl.models import load_model, save_model
    from symdsl.experiments.train import CHAR_LLAMA, small_llama, train

    folder = cache_root() / f"llama-{dataset.name}-chars{chars or 'all'}-w{width}-seed{seed}-steps{CHAR_LLAMA['steps']}"
    record = folder / "symdsl.json"
    if record.exists():
        return load_model(str(folder)), json.loads(record.read_text())
    model = small_llama(dataset, hidden_size=width, seed=seed)
    say(f"    training seed {seed} ({CHAR_LLAMA['steps']} steps) ...")
    metrics = train(model, dataset, seed=seed, **CHAR_LLAMA)
    metrics = {k: v for k, v in metrics.items() if k != "losses"}
    say(f"    trained seed {seed} in {metrics['seconds']:.0f} s: test loss {metrics['test_loss']:.3f}")
    save_model(model, folder, {"command": "llama_pairs-train", "seed": seed, "data": dataset.name, "chars": chars,
                               "width": width, **metrics})
    return model, json.loads(record.read_text())


def measure_pair(models, dataset, learn_steps: int, learned: dict, say) -> dict[str, dict]:
    """Barriers of every method on one pair: label -> {loss, accuracy, seconds}."""
    from symdsl.api import find_spec
    from symdsl.api.pipeline import prepare
    from symdsl.evaluate import barrier, loss_curve

    spec = find_spec(SPEC)
    prepared = {None: prepare(models, spec), "held": prepare(models, without_sites(spec, HELD))}
    starts: dict[bool, tuple] = {}   # permutations_only -> (weight-matching result, seconds), shipped spec
    out = {}
    for label, matcher, options, variant in METHODS:
        key = options.get("permutations_only", False)
        state_b, seconds = aligned_state(prepared[variant], matcher, options, dataset, learn_steps, starts, key,
                                         learned=learned, remember=variant is None)
        p = prepared[variant]
        curve = loss_curve(p.models[0], p.states[0], state_b, dataset)
        b = barrier(curve)
        out[label] = {"loss": b.loss, "accuracy": b.accuracy, "seconds": seconds, "curve": curve.loss}
        say(f"    {label}: loss barrier {b.loss:.3f} ({seconds:.1f} s)")
    return out


def markdown(block: dict, machine: dict, command: str) -> str:
    pairs = block["pairs"]
    ends = "; ".join(f"seeds {2 * i}/{2 * i + 1}: {a:.3f}/{b:.3f}" for i, (a, b) in enumerate(block["test_loss"]))
    lines = [f"`{command}`: {pairs} independent pairs of 2 x {block['width']} Llamas (seeds 0-1, 2-3, ...) trained with "
             f"`CHAR_LLAMA` on {block['corpus']}; endpoint test losses {ends}. Test-loss barrier (paper definition, "
             "11 points); accuracy barrier in points (mean); align time per pair (learned rows include their "
             f"weight-matching start). Learned matching: {block['learn_steps']} steps, options {block['learned']}.", "",
             "| method | " + " | ".join(f"pair {i} (seeds {2 * i}, {2 * i + 1})" for i in range(pairs)) +
             " | mean ± std | accuracy barrier | align time |",
             "|---|" + "---|" * (pairs + 3)]
    for label, row in block["rows"].items():
        lines.append(f"| {label} | " + " | ".join(f"{x:.3f}" for x in row["loss"]) +
                     f" | {row['loss_mean']:.3f} ± {row['loss_std']:.3f} | {100 * row['accuracy_mean']:.1f} | "
                     f"{row['seconds_mean']:.1f} s |")
    ratios = ", ".join(f"{r:.2f}" for r in block["learned_over_weight"])
    lines += ["", f"Learned (full) / weight matching (full), per pair: {ratios}.", "",
              f"Machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, one intra-op thread, "
              f"load average at the start {machine['load']}; {machine['seconds']:.0f} s in all (training included "
              "where the cache was empty).", ""]
    return "\n".join(lines)


def parse_option(text: str) -> tuple[str, object]:
    """``"lr=0.01"`` -> ("lr", 0.01): the value read as YAML, as ``--option`` does on the command line.

    >>> parse_option("lr=0.01"), parse_option("schedule=constant")
    (('lr', 0.01), ('schedule', 'constant'))
    """
    import yaml

    key, sep, value = text.partition("=")
    if not sep:
        raise SystemExit(f"--learn-option '{text}': expected KEY=VALUE")
    return key.strip(), yaml.safe_load(value)


def main(argv=None) -> int:
    from symdsl.data import load_dataset

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--width", type=int, default=64, help="residual width (2 layers; default 64)")
    parser.add_argument("--chars", type=int, default=50_000,
                        help="train and test on the first N characters of the corpus (0: all; default 50000)")
    parser.add_argument("--learn-steps", type=int, default=1000)
    parser.add_argument("--learn-option", action="append", default=[], metavar="KEY=VALUE",
                        help="learned matching option over the benchmark's (LEARNED), e.g. lr=0.003 (repeatable)")
    parser.add_argument("--text", default=str(DEFAULT_TEXT), help="corpus (default: Tiny Shakespeare)")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "llama_pairs.json"))
    parser.add_argument("--results", action="store_true", help="rewrite the Llama section of benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    if not Path(args.text).is_file():
        raise SystemExit(f"corpus '{args.text}' not found; pass --text PATH")
    torch.set_num_threads(1)   # tiny models: one thread is fastest, and robust on a shared CPU
    load = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    started = time.perf_counter()
    say = lambda line: print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)
    chars = args.chars or None
    learned = {**LEARNED, **dict(parse_option(o) for o in args.learn_option)}
    dataset = load_dataset(f"text:{args.text}", **({"max_chars": chars} if chars else {}))
    corpus = f"the first {chars:,} characters of {Path(args.text).name}" if chars else f"all of {Path(args.text).name}"
    say(f"Llama 2 x {args.width} on {corpus}: {args.pairs} pairs")
    per_pair, test_loss = [], []
    for pair in range(args.pairs):
        say(f"  pair {pair + 1}/{args.pairs} (seeds {2 * pair}, {2 * pair + 1})")
        loaded = [trained(seed, dataset, args.width, chars, say) for seed in (2 * pair, 2 * pair + 1)]
        test_loss.append([record["test_loss"] for _, record in loaded])
        per_pair.append(measure_pair([model for model, _ in loaded], dataset, args.learn_steps, learned, say))
    rows = summarise(per_pair)
    block = {"dataset": dataset.name, "corpus": corpus, "chars": chars, "width": args.width, "pairs": args.pairs,
             "learn_steps": args.learn_steps, "learned": learned, "test_loss": test_loss, "rows": rows,
             "learned_over_weight": [p["learned matching, full"]["loss"] / p["weight matching, full"]["loss"]
                                     for p in per_pair],
             "per_pair": per_pair}
    machine = machine_info(time.perf_counter() - started, load)
    say(f"\ntest-loss barrier per pair, mean ± std over {args.pairs} pairs")
    for label, row in rows.items():
        say(f"  {label:<52} {' '.join(f'{x:6.3f}' for x in row['loss'])}   {row['loss_mean']:.3f} ± {row['loss_std']:.3f}")
    say("  learned full / weight full: " + ", ".join(f"{r:.2f}" for r in block["learned_over_weight"]))
    command = "python benchmarks/llama_pairs.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_outputs({"results": block, "machine": machine}, args.json, say,
                  (HEADING, markdown(block, machine, command.strip())) if args.results else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
