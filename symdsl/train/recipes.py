"""Measured training settings for the benchmark pairs (keyword arguments of :func:`symdsl.train.train`).

Measured on a 2-core CPU (torch 2.14, 2 threads); wall time varies with machine load.

- ``DIGITS_VIT``: :func:`small_vit` defaults (2 layers, 64 wide, 4 heads) on ``digits``:
  96-97 % test accuracy, test loss 0.12-0.14, in about 9 s (seeds 0 and 1).
- ``CHAR_GPT2``: :func:`small_gpt2` defaults (2 layers, 64 wide, 4 heads) on Tiny Shakespeare,
  characters, block 64: test loss 1.92 (43 % next-character accuracy) against a unigram
  baseline of 3.35, in about 34 s.

>>> from symdsl.data import load_dataset
>>> from symdsl.train import small_vit, train
>>> ds = load_dataset("digits")
>>> metrics = train(small_vit(ds, seed=0), ds, seed=0, **{**DIGITS_VIT, "steps": 20})
>>> metrics["steps"]
20
"""
from __future__ import annotations

DIGITS_VIT = {"steps": 600, "batch_size": 64, "lr": 3e-3, "schedule": "cosine", "weight_decay": 0.01,
              "threads": 1}
CHAR_GPT2 = {"steps": 1000, "batch_size": 32, "lr": 6e-3, "schedule": "cosine", "weight_decay": 0.01,
             "threads": 1}
