"""Tiny, seeded trainers and model factories for the benchmark pairs (timm ViT on digits, GPT-2 and Llama on text, RoBERTa masked LM).

>>> from symdsl.data import load_dataset
>>> from symdsl.experiments.train import small_vit, train
>>> ds = load_dataset("digits")
>>> train(small_vit(ds, seed=1), ds, steps=3, seed=1, evaluate_split=None)["steps"]
3
"""
from .loop import train
from .models import small_gpt2, small_llama, small_roberta, small_vit
from .recipes import CHAR_GPT2, CHAR_LLAMA, CHAR_ROBERTA, DIGITS_VIT
from ...learn.schedule import SCHEDULES, lr_multiplier

__all__ = ["CHAR_GPT2", "CHAR_LLAMA", "CHAR_ROBERTA", "DIGITS_VIT", "SCHEDULES", "lr_multiplier", "small_gpt2",
           "small_llama", "small_roberta", "small_vit", "train"]
