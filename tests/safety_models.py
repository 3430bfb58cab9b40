"""Tiny GPT-2 folders for the safety tests (written with save_pretrained, loaded as users would)."""
from __future__ import annotations

from pathlib import Path

import torch

from symdsl.models.build import perturb_parameters, quiet_transformers

CONFIG = dict(n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=16, bos_token_id=0, eos_token_id=0)


def tiny_gpt2(seed: int = 0, **overrides) -> torch.nn.Module:
    """A random GPT2LMHeadModel of the hf-gpt2 example's size (config fields overridable)."""
    import transformers

    torch.manual_seed(seed)
    with quiet_transformers():
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**CONFIG, **overrides}))
    return perturb_parameters(model, seed=seed).eval()


def gpt2_folder(folder: Path, seed: int = 0, **overrides) -> Path:
    """``tiny_gpt2(seed, **overrides)`` saved into ``folder``; returns the folder."""
    with quiet_transformers():
        tiny_gpt2(seed, **overrides).save_pretrained(folder)
    return folder


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes, to show a folder was left untouched."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
