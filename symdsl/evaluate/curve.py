"""Loss and accuracy along the linear path between two models, as a JSON-serialisable ``Curve``."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .. import distributed
from ..data import Dataset, Split, load_dataset
from ..errors import UsageError
from .forward import autocast as autocast_context
from .interpolate import State, interpolate
from .metrics import default_batch_size, evaluate, model_device

CURVE_FORMAT = "symdsl.curve/1"


@dataclass
class Curve:
    """Loss and accuracy at each ``lam`` on the path ``lam * A + (1 - lam) * B`` (lam = 1 is A, 0 is B).

    >>> c = Curve([0.0, 0.5, 1.0], [1.0, 2.0, 1.0], [0.9, 0.5, 0.9])
    >>> Curve.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    True
    """

    lambdas: list[float]
    loss: list[float]
    accuracy: list[float]
    split: str = "test"
    dataset: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (len(self.lambdas) == len(self.loss) == len(self.accuracy)):
            raise UsageError(f"curve has {len(self.lambdas)} lambdas, {len(self.loss)} losses and "
                             f"{len(self.accuracy)} accuracies; they must be equally many")

    def at(self, lam: float) -> tuple[float, float]:
        """``(loss, accuracy)`` at a grid point ``lam`` (0 is B, 1 is A).

        >>> Curve([0.0, 1.0], [2.0, 1.0], [0.1, 0.9]).at(1.0)
        (1.0, 0.9)
        """
        for i, value in enumerate(self.lambdas):
            if abs(value - lam) < 1e-9:
                return self.loss[i], self.accuracy[i]
        raise UsageError(f"the curve has no point at lambda={lam:g} (its grid: {self.lambdas}); "
                         "a curve must include both endpoints, lambda 0 (B) and 1 (A)")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable record, tagged with its format."""
        return {"format": CURVE_FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> "Curve":
        """The curve a :meth:`to_dict` record describes."""
        record = dict(record)
        fmt = record.pop("format", CURVE_FORMAT)
        if fmt != CURVE_FORMAT:
            raise UsageError(f"record format '{fmt}' is not a curve ({CURVE_FORMAT})")
        for derived in ("barrier", "barrier_mean"):   # added by curves_record / barrier --json; recomputed
            record.pop(derived, None)
        return cls(**record)

    def save(self, path: str | Path) -> Path:
        """Write the record as JSON to ``path``."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Curve":
        """Read a curve written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text()))


def loss_curve(model: torch.nn.Module, state_a: State, state_b: State, dataset: Dataset | str, *,
               points: int = 11, split: str = "test", batch_size: int | None = None,
               device: torch.device | str | None = None, max_batches: int | None = None,
               progress: Callable[[int, int], None] | None = None, autocast: str | None = None) -> Curve:
    """Evaluate ``lam * A + (1 - lam) * B`` for ``lam`` in ``linspace(0, 1, points)``.

    Each interpolated state is loaded into ``model`` (same architecture as A and B) with
    ``load_state_dict``, so the model is never copied; its own weights are restored at the end.
    An endpoint may be ``model.state_dict()`` itself: tensors that alias the model are copied once.
    ``progress(done, points)`` is called after each point; other options go to :func:`evaluate`.
    ``autocast`` ("bfloat16", "float16") runs the forward passes in that dtype (``torch.autocast``).
    Under ``torchrun`` each rank evaluates its contiguous share of the (``max_batches``-limited)
    split and the sums are reduced over ranks: every rank gets the whole curve; only rank 0
    reports ``progress``.

    >>> import torch
    >>> from symdsl.data import load_dataset
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    >>> a = {k: v.clone() for k, v in model.state_dict().items()}
    >>> b = {k: torch.zeros_like(v) for k, v in a.items()}
    >>> curve = loss_curve(model, a, b, load_dataset("digits"), points=3)
    >>> curve.lambdas, round(curve.loss[0], 4)   # lam = 0 is B: all-zero logits, loss log(10)
    ([0.0, 0.5, 1.0], 2.3026)
    """
    if points < 2:
        raise UsageError(f"a curve needs at least 2 points (both endpoints), not {points}")
    dataset = load_dataset(dataset)
    lambdas = [float(x) for x in torch.linspace(0.0, 1.0, points, dtype=torch.float64)]
    original = {key: value.detach().clone() for key, value in model.state_dict().items()}
    # model.state_dict() returns the live parameters: loading a point into the model would
    # overwrite an endpoint given that way, so such endpoints are copied first.
    state_a, state_b = _unaliased(model, state_a), _unaliased(model, state_b)
    loss, accuracy = [], []
    try:
        for done, lam in enumerate(lambdas, start=1):
            model.load_state_dict(interpolate(state_a, state_b, lam))
            metrics = _evaluate(model, dataset, split, batch_size=batch_size, device=device, max_batches=max_batches,
                                autocast=autocast)
            loss.append(metrics["loss"])
            accuracy.append(metrics["accuracy"])
            if progress is not None and distributed.is_main():
                progress(done, points)
    finally:
        model.load_state_dict(original)
    info = {"points": points, "max_batches": max_batches}
    if autocast is not None:
        info["autocast"] = autocast
    if distributed.world_size() > 1:
        info["processes"] = distributed.world_size()
    return Curve(lambdas, loss, accuracy, split=split, dataset=dataset.name, info=info)


def _evaluate(model, dataset: Dataset, split: str, *, batch_size, device, max_batches, autocast) -> dict[str, float]:
    """:func:`evaluate` on one process; on several, each rank's share reduced into the whole split's metrics."""
    if device is not None:
        model.to(device)
    with autocast_context(model_device(model), autocast):
        if not distributed.active():
            return evaluate(model, dataset, split, batch_size=batch_size, max_batches=max_batches)
        share = _rank_share(dataset, split, batch_size, max_batches)
        n = share.split(split).targets.numel()   # loss terms: examples, or tokens for language models
        local = evaluate(model, share, split, batch_size=batch_size) if len(share.split(split)) else \
            {"loss": 0.0, "accuracy": 0.0}
    loss_sum, correct, count = distributed.reduce_sums([local["loss"] * n, local["accuracy"] * n, n])
    return {"loss": loss_sum / count, "accuracy": correct / count}


def _rank_share(dataset: Dataset, split: str, batch_size: int | None, max_batches: int | None) -> Dataset:
    """``dataset`` with ``split`` cut to this rank's contiguous share of the examples one process would
    evaluate (the first ``max_batches`` batches of ``batch_size``, or all of them)."""
    part = dataset.split(split)
    limit = len(part)
    if max_batches is not None:
        if max_batches < 1:
            raise UsageError(f"max_batches must be at least 1, not {max_batches}")
        limit = min(limit, max_batches * (batch_size or default_batch_size(dataset)))
    if limit == 0:
        raise UsageError(f"the {split} split of '{dataset.name}' is empty")
    start, stop = distributed.bounds(limit)
    return dataclasses.replace(dataset, **{split: Split(part.inputs[start:stop], part.targets[start:stop])})


def _unaliased(model: torch.nn.Module, state: State) -> State:
    # Storage pointers of the model's tensors; an endpoint tensor sharing one is cloned.
    live = {tensor.untyped_storage().data_ptr() for tensor in model.state_dict().values()}
    return {key: value.detach().clone()
            if isinstance(value, torch.Tensor) and value.untyped_storage().data_ptr() in live else value
            for key, value in state.items()}
