"""Loss and accuracy along the linear path between two models, as a JSON-serialisable ``Curve``."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..data import Dataset, load_dataset
from ..errors import UsageError
from .interpolate import State, interpolate
from .metrics import evaluate

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
               progress: Callable[[int, int], None] | None = None) -> Curve:
    """Evaluate ``lam * A + (1 - lam) * B`` for ``lam`` in ``linspace(0, 1, points)``.

    Each interpolated state is loaded into ``model`` (same architecture as A and B) with
    ``load_state_dict``, so the model is never copied; its own weights are restored at the end.
    An endpoint may be ``model.state_dict()`` itself: tensors that alias the model are copied once.
    ``progress(done, points)`` is called after each point; other options go to :func:`evaluate`.

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
            metrics = evaluate(model, dataset, split, batch_size=batch_size, device=device, max_batches=max_batches)
            loss.append(metrics["loss"])
            accuracy.append(metrics["accuracy"])
            if progress is not None:
                progress(done, points)
    finally:
        model.load_state_dict(original)
    return Curve(lambdas, loss, accuracy, split=split, dataset=dataset.name,
                 info={"points": points, "max_batches": max_batches})


def _unaliased(model: torch.nn.Module, state: State) -> State:
    # Storage pointers of the model's tensors; an endpoint tensor sharing one is cloned.
    live = {tensor.untyped_storage().data_ptr() for tensor in model.state_dict().values()}
    return {key: value.detach().clone()
            if isinstance(value, torch.Tensor) and value.untyped_storage().data_ptr() in live else value
            for key, value in state.items()}
