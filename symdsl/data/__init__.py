"""Datasets for training and evaluating merged models: real digits, text files (causal or masked LM), the stdlib's source.

>>> from symdsl.data import load_dataset
>>> ds = load_dataset("digits")
>>> x, y = next(ds.batches("test", 32))
>>> tuple(x.shape), tuple(y.shape)
((32, 1, 8, 8), (32,))
"""
from .base import IGNORE_INDEX, TOKEN_TASKS, Dataset, Split
from .counts import token_counts
from .corpus import stdlib_corpus, stdlib_text_dataset
from .digits import load_digits_dataset
from .masked import MaskedDataset, masked_text_dataset, masked_text_file_dataset
from .registry import BUILTIN_DATASETS, load_dataset
from .text import text_dataset, text_file_dataset
from .tokenizers import BPETokenizer, CharTokenizer

__all__ = ["BPETokenizer", "CharTokenizer", "BUILTIN_DATASETS", "Dataset", "IGNORE_INDEX", "MaskedDataset", "Split",
           "TOKEN_TASKS", "load_dataset", "load_digits_dataset", "masked_text_dataset", "masked_text_file_dataset",
           "stdlib_corpus", "stdlib_text_dataset", "text_dataset", "text_file_dataset",
           "token_counts"]
