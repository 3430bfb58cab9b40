"""``evaluate``: exact mean cross-entropy and accuracy of a model over a dataset split."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..data import IGNORE_INDEX, TOKEN_TASKS, Dataset, load_dataset
from ..errors import UsageError
from .forward import model_logits


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model without any)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def model_float_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype of the model's first floating-point parameter (float32 if none)."""
    for tensor in model.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


# Largest logits tensor one evaluation batch may produce (elements): 2^25 float32 = 128 MiB.
LOGITS_BUDGET = 2 ** 25


def default_batch_size(dataset: Dataset) -> int:
    """256 examples, fewer for language models whose (B, T, V) logits would exceed 128 MiB.

    >>> from symdsl.data import text_dataset
    >>> default_batch_size(text_dataset("ab" * 100, block_size=8))
    256
    """
    if dataset.task not in TOKEN_TASKS:
        return 256
    return max(1, min(256, LOGITS_BUDGET // (dataset.block_size * dataset.vocab_size)))


def evaluate(model: torch.nn.Module, dataset: Dataset | str, split: str = "test", *, batch_size: int | None = None,
             device: torch.device | str | None = None, max_batches: int | None = None,
             progress: Callable[[int, int], None] | None = None) -> dict[str, float]:
    """Mean cross-entropy and accuracy of ``model`` on a split: ``{"loss": ..., "accuracy": ...}``.

    Classification: over examples, from ``model(x)`` logits (B, C). Language models: over every
    next-token prediction, from ``model(input_ids=ids).logits`` (B, T, V); masked language models:
    over the masked positions (targets other than ``IGNORE_INDEX``). Sums are accumulated
    per example/token and divided once, so the result does not depend on ``batch_size``.
    Runs in eval mode under ``torch.no_grad`` and restores the model's train/eval mode after.
    ``batch_size`` defaults to :func:`default_batch_size` (bounded logits memory for large vocabularies).
    ``device`` moves the model there (default: where it is). Floating inputs are cast to the
    model's dtype (a float64 model gets float64 images). ``max_batches`` evaluates only the first
    batches (the split in its fixed order); ``progress(done, total)`` is called after each batch.

    >>> import torch
    >>> from symdsl.data import load_dataset
    >>> ds = load_dataset("digits")
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    >>> with torch.no_grad():
    ...     _ = model[1].weight.zero_(), model[1].bias.zero_()  # every class equally likely
    >>> round(evaluate(model, ds)["loss"], 4)   # log(10)
    2.3026
    """
    dataset = load_dataset(dataset)
    if device is not None:
        model.to(device)
    device = model_device(model)
    dtype = model_float_dtype(model)
    part = dataset.split(split)
    batch_size = batch_size or default_batch_size(dataset)
    total = -(-len(part) // batch_size)
    if max_batches is not None:
        if max_batches < 1:
            raise UsageError(f"max_batches must be at least 1, not {max_batches}")
        total = min(total, max_batches)
    if total == 0:
        raise UsageError(f"the {split} split of '{dataset.name}' is empty")
    loss_sum, correct, count = 0.0, 0, 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for done, (inputs, targets) in enumerate(dataset.batches(split, batch_size, device=device), start=1):
                if inputs.is_floating_point():
                    inputs = inputs.to(dtype)
                logits = model_logits(model, dataset.task, inputs)
                if done == 1:
                    _check_output_size(logits, dataset)
                # (B, C) or (B, T, V) -> (B*T, V); targets (B,) or (B, T) -> (B*T,)
                logits = logits.reshape(-1, logits.shape[-1])
                targets = targets.reshape(-1)
                logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
                scored = targets != IGNORE_INDEX   # (B*T,): every position but a masked LM's unmasked ones
                loss_sum += float(F.cross_entropy(logits, targets, reduction="sum", ignore_index=IGNORE_INDEX))
                correct += int((logits.argmax(dim=-1) == targets)[scored].sum())
                count += int(scored.sum())
                if progress is not None:
                    progress(done, total)
                if done >= total:
                    break
    finally:
        model.train(was_training)
    if count == 0:
        raise UsageError(f"the {split} split of '{dataset.name}' has no scored target (every one is {IGNORE_INDEX}); "
                         "mask a larger fraction or evaluate more batches")
    return {"loss": loss_sum / count, "accuracy": correct / count}


def _check_output_size(logits: torch.Tensor, dataset: Dataset) -> None:
    """A model whose output size is not the dataset's vocabulary (or class count) would be scored
    silently wrong: a character-level split fed to a BPE model still has valid token ids."""
    tokens = dataset.task in TOKEN_TASKS
    expected = dataset.vocab_size if tokens else dataset.num_classes
    if expected is not None and logits.shape[-1] != expected:
        what = "vocabulary" if tokens else "number of classes"
        hint = (" (a GPT-2 BPE model needs --tokenizer DIR with the tokenizer it was trained with)"
                if dataset.task == "language_model" else "")
        raise UsageError(f"the model outputs {logits.shape[-1]} scores per position but dataset '{dataset.name}' has a "
                         f"{what} of {expected}: evaluate it on the data it was trained for{hint}")
