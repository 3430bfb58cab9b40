"""The BPE GPT-2 pair of issue 15: the paper's small language-model recipe on Tiny Shakespeare, cached.

Usage (from the repository root)::

    python benchmarks/bpe_pair.py --seed 0 &      # one model per process, one thread each
    python benchmarks/bpe_pair.py --seed 1 &
    python benchmarks/wm_reference.py             # reads the two cached models

The pair: ``GPT2LMHeadModel`` with 2 layers x 128, 4 heads, ``n_inner`` 512 (GPT-2's default
4 x width), the GPT-2 BPE tokenizer (50,257 ids, about 11,000 of them occur in the train split),
block 64, trained for 3 epochs (one epoch = the train split's 64-token blocks, 4,753 of them,
in batches of 32: 148 steps) with the ``CHAR_GPT2`` optimiser settings (AdamW, lr 2e-3, cosine,
weight decay 0.01), warmup a tenth of the run. Models are cached under
``$SYMDSL_CACHE/bench`` (default ``~/.cache/symdsl/bench``) like ``benchmarks/table1.py``'s, so
a second run only loads them.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TEXT = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
DEFAULT_TOKENIZER = ROOT.parent / "shared" / "data" / "gpt2_tokenizer"
WIDTH, LAYERS, HEADS = 128, 2, 4
EPOCHS, BATCH = 3, 32


def cache_root() -> Path:
    """``$SYMDSL_CACHE/bench`` (default ``~/.cache/symdsl/bench``), shared with table1.py."""
    root = os.environ.get("SYMDSL_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"),
                                                          "symdsl")
    return Path(root) / "bench"


def load_data(text: str | Path = DEFAULT_TEXT, tokenizer: str | Path = DEFAULT_TOKENIZER):
    """The BPE Tiny Shakespeare dataset (block 64, 90/10 split) the pair is trained and evaluated on."""
    from symdsl.data import load_dataset

    return load_dataset(f"text:{text}", tokenizer=str(tokenizer))


def recipe(dataset) -> dict:
    """``CHAR_GPT2``'s optimiser settings for ``EPOCHS`` passes over ``dataset``'s train blocks."""
    from symdsl.experiments.train import CHAR_GPT2

    steps = EPOCHS * (len(dataset.train) // BATCH)
    return {**CHAR_GPT2, "steps": steps, "batch_size": BATCH, "warmup": steps // 10, "threads": 1}


def folder(dataset, seed: int) -> Path:
    steps = recipe(dataset)["steps"]
    return cache_root() / f"gpt2-{WIDTH}x{LAYERS}-{dataset.name}-bpe-seed{seed}-steps{steps}"


def trained(dataset, seed: int, say=print) -> torch.nn.Module:
    """The model of ``seed`` (trained and cached on first use)."""
    from symdsl.experiments.train import small_gpt2, train
    from symdsl.models import load_model, save_model

    where = folder(dataset, seed)
    if (where / "symdsl.json").exists():
        return load_model(str(where))
    model = small_gpt2(dataset, n_embd=WIDTH, n_layer=LAYERS, n_head=HEADS, seed=seed)
    assert model.config.n_inner is None or model.config.n_inner == 4 * WIDTH
    started = time.perf_counter()
    metrics = train(model, dataset, seed=seed, **recipe(dataset))
    say(f"trained BPE GPT-2 seed {seed} in {time.perf_counter() - started:.0f} s: "
        f"test loss {metrics['test_loss']:.4f}, final train loss {metrics['final_loss']:.4f}")
    record = {"command": "bpe-pair-train", "seed": seed, "data": dataset.name, "recipe": recipe(dataset),
              **{k: v for k, v in metrics.items() if k != "losses"}}
    save_model(model, where, record, overwrite=True)    # our cache folder
    return model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, action="append", help="seed to train (repeatable; default 0 and 1)")
    parser.add_argument("--text", default=str(DEFAULT_TEXT))
    parser.add_argument("--tokenizer", default=str(DEFAULT_TOKENIZER))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    dataset = load_data(args.text, args.tokenizer)
    for seed in args.seed or [0, 1]:
        trained(dataset, seed)
        print(f"seed {seed}: {folder(dataset, seed)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
