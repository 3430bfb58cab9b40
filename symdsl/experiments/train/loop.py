"""``train``: a small, seeded AdamW loop for classifiers and language models on a symdsl Dataset."""
from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterator

import torch

from ...data import Dataset, load_dataset
from ...errors import UsageError
from ...evaluate.forward import batch_loss
from ...evaluate.metrics import evaluate, model_device, model_float_dtype
from ...learn.schedule import lr_multiplier
from ...threads import torch_threads


def train(model: torch.nn.Module, dataset: Dataset | str, *, steps: int, batch_size: int = 64, lr: float = 1e-3,
          weight_decay: float = 0.01, schedule: str = "cosine", warmup: int = 0, grad_clip: float | None = 1.0,
          seed: int = 0, device: torch.device | str | None = None, evaluate_split: str | None = "test",
          threads: int | None = None, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Train ``model`` in place for ``steps`` AdamW steps on shuffled train batches; return metrics.

    Batches come from ``dataset.batches("train", shuffle=True)`` with seeds derived from ``seed``
    (one per pass), and the global torch RNG (dropout) is seeded inside a forked RNG state, so
    the same seed gives the same model on the CPU and the caller's RNG is left untouched.
    ``schedule`` is ``"cosine"`` (to 0) or ``"constant"``, after ``warmup`` linear steps.
    ``threads`` sets torch's CPU thread count for the run (restored after): models this small
    gain nothing from intra-op threads, and on a busy shared CPU two threads were measured
    10-20x slower than one (OpenMP workers waiting on each other), so the recipes use 1.
    Metrics: ``steps``, ``seconds``, ``first_loss``, ``final_loss`` (mean of the last 10 batch
    losses), ``losses`` (every batch loss), and, unless ``evaluate_split`` is None, that split's
    ``<split>_loss`` and ``<split>_accuracy``. The model is left in eval mode.

    >>> from symdsl.data import load_dataset
    >>> from symdsl.experiments.train import small_vit
    >>> ds = load_dataset("digits")
    >>> metrics = train(small_vit(ds, seed=0), ds, steps=5, batch_size=32, seed=0)
    >>> metrics["steps"], metrics["test_accuracy"] > 0.0
    (5, True)
    """
    if steps < 1:
        raise UsageError(f"steps must be at least 1, not {steps}")
    dataset = load_dataset(dataset)
    if len(dataset.train) < batch_size:
        raise UsageError(f"batch_size {batch_size} is larger than the train split ({len(dataset.train)} examples)")
    if device is not None:
        model.to(device)
    device = model_device(model)
    dtype = model_float_dtype(model)
    decay, no_decay = _parameter_groups(model)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(schedule, steps, warmup=warmup))
    losses: list[float] = []
    start = time.perf_counter()
    model.train()
    with _seeded(seed, device), torch_threads(threads):
        for step, (inputs, targets) in enumerate(_batch_stream(dataset, batch_size, seed, device)):
            if step >= steps:
                break
            if inputs.is_floating_point():
                inputs = inputs.to(dtype)
            loss = batch_loss(model, dataset.task, inputs, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            if progress is not None:
                progress(step + 1, steps)
    model.eval()
    metrics: dict[str, Any] = {"steps": steps, "seconds": time.perf_counter() - start, "first_loss": losses[0],
                               "final_loss": sum(losses[-10:]) / len(losses[-10:]), "losses": losses}
    if evaluate_split is not None:
        with torch_threads(threads):
            result = evaluate(model, dataset, evaluate_split)
        metrics.update({f"{evaluate_split}_{key}": value for key, value in result.items()})
    return metrics


def _batch_stream(dataset: Dataset, batch_size: int, seed: int, device) -> Iterator:
    # Endless shuffled passes over the train split; pass p uses its own seed, so the stream is
    # a pure function of (seed, dataset, batch_size). drop_last keeps every batch full-size.
    epoch = 0
    while True:
        yield from dataset.batches("train", batch_size, shuffle=True, seed=seed * 1_000_003 + epoch,
                                   device=device, drop_last=True)
        epoch += 1


def _parameter_groups(model: torch.nn.Module) -> tuple[list, list]:
    # Weight decay on matrices only: biases, norm gains, embeddings' 1-D vectors and tokens
    # (cls_token, pos_embed have a leading singleton axis but are not matrices of a layer) are exempt.
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_matrix = param.dim() >= 2 and not name.endswith(("cls_token", "pos_embed", "reg_token"))
        (decay if is_matrix else no_decay).append(param)
    return decay, no_decay


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device):
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
