"""Carve a validation split out of a dataset's train split (for early stopping without the test split).

>>> from symdsl.data import load_dataset
>>> ds = load_dataset("digits")
>>> fit = with_validation(ds, fraction=0.1)
>>> len(fit.train) + len(fit.test) == len(ds.train), fit.info["validation_of"]
(True, 'digits')
"""
from __future__ import annotations

import dataclasses

from ..errors import UsageError
from .base import Dataset, Split
from .text import _blocks


def with_validation(dataset: Dataset, fraction: float = 0.1) -> Dataset:
    """A copy of ``dataset`` whose ``train`` split is the first ``1 - fraction`` of the original
    train split and whose ``test`` split is the rest: a validation split the test split never sees.

    Classification splits are cut by example (the train split is already shuffled when built);
    language-model splits are cut in the token stream, so no window crosses the cut. A dataset
    with its own ``blocks(stream, split)`` (masked LM: masks drawn per block) cuts both parts with it.
    """
    if not 0.0 < fraction < 1.0:
        raise UsageError(f"validation fraction must be between 0 and 1, not {fraction}")
    part = dataset.train
    if part.stream is not None:
        cut = int(part.stream.numel() * (1.0 - fraction))
        blocks = getattr(dataset, "blocks", None)
        if blocks is None:
            train, validation = (_blocks(part.stream[:cut], dataset.block_size),
                                 _blocks(part.stream[cut:], dataset.block_size))
        else:    # the validation masks are fixed, like the test split's
            train, validation = blocks(part.stream[:cut], "train"), blocks(part.stream[cut:], "test")
    else:
        cut = int(len(part) * (1.0 - fraction))
        train = Split(part.inputs[:cut], part.targets[:cut])
        validation = Split(part.inputs[cut:], part.targets[cut:])
    if len(train) == 0 or len(validation) == 0:
        raise UsageError(f"dataset '{dataset.name}': its train split ({len(part)} examples) is too small to hold "
                         f"out a validation fraction of {fraction}")
    return dataclasses.replace(dataset, name=f"{dataset.name}[fit]", train=train, test=validation,
                               info={**dataset.info, "validation_of": dataset.name, "validation_fraction": fraction})
