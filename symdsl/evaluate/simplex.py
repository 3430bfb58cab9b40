"""Loss and accuracy over the 2-simplex of three models, relative to the planar baseline.

A grid of resolution n holds the barycentric points w = (i, j, k) / n with i + j + k = n,
(n + 1)(n + 2) / 2 of them, vertices included (the centroid is added when n is not a multiple
of 3). At each point the model sum_m w_m theta_m is evaluated. The *planar baseline* is the
plane through the three vertices, sum_m w_m L_m; the loss gap L(w) - sum_m w_m L_m is the
simplex version of the loss barrier (zero everywhere for a model merged with itself), and the
accuracy gap sum_m w_m acc_m - acc(w) is positive where accuracy dips.

>>> s = Surface([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1/3, 1/3, 1/3]],
...             [1.0, 2.0, 3.0, 2.5], [0.9, 0.8, 0.7, 0.5])
>>> round(s.loss_gap()[-1], 12), round(s.accuracy_gap()[-1], 12)
(0.5, 0.3)
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from ..data import Dataset, load_dataset
from ..errors import UsageError
from .curve import _unaliased
from .interpolate import State, weighted_average
from .metrics import evaluate

SURFACE_FORMAT = "symdsl.simplex/1"
REPORT_FORMAT = "symdsl.simplex-report/1"
CENTROID = [1.0 / 3.0] * 3


def simplex_grid(resolution: int) -> list[list[float]]:
    """Barycentric points (i/n, j/n, k/n), i + j + k = n, ordered by i then j; plus the centroid
    when n is not a multiple of 3.

    >>> simplex_grid(1)
    [[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.3333333333333333, 0.3333333333333333, 0.3333333333333333]]
    >>> len(simplex_grid(6))     # (n + 1)(n + 2) / 2, the centroid among them
    28
    """
    if int(resolution) != resolution or resolution < 1:
        raise UsageError(f"a simplex grid needs a resolution of at least 1 (points per edge - 1), not {resolution}")
    n = int(resolution)
    # exact fractions, so that the weights of every point sum to 1 and vertices are exactly one-hot
    points = [[float(Fraction(i, n)), float(Fraction(j, n)), float(Fraction(n - i - j, n))]
              for i in range(n + 1) for j in range(n + 1 - i)]
    if n % 3:
        points.append(list(CENTROID))
    return points


def _close(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(abs(x - y) < 1e-9 for x, y in zip(a, b))


@dataclass
class Surface:
    """Loss and accuracy at barycentric ``weights`` (one [w0, w1, w2] per point) of three models.

    The three vertices must be among the points: they define the planar baseline.

    >>> s = Surface([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], [1.0, 2.0, 3.0], [0.9, 0.8, 0.7])
    >>> Surface.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    True
    """

    weights: list[list[float]]
    loss: list[float]
    accuracy: list[float]
    split: str = "test"
    dataset: str = ""
    labels: list[str] = field(default_factory=lambda: ["model 0", "model 1", "model 2"])
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (len(self.weights) == len(self.loss) == len(self.accuracy)):
            raise UsageError(f"surface has {len(self.weights)} points, {len(self.loss)} losses and "
                             f"{len(self.accuracy)} accuracies; they must be equally many")
        for w in self.weights:
            if len(w) != 3 or abs(sum(w) - 1.0) > 1e-9 or min(w) < -1e-12:
                raise UsageError(f"surface point {w} is not a barycentric point of three models "
                                 "(three non-negative weights summing to 1)")
        if len(self.labels) != 3:
            raise UsageError(f"a surface over three models needs three labels, got {self.labels}")
        for m in range(3):
            self._index(self._vertex(m))

    @staticmethod
    def _vertex(m: int) -> list[float]:
        return [1.0 if j == m else 0.0 for j in range(3)]

    def _index(self, point: Sequence[float]) -> int:
        for i, w in enumerate(self.weights):
            if _close(w, point):
                return i
        raise UsageError(f"the surface has no point at weights {list(point)}; a surface must include the three "
                         "vertices (one-hot weights), which define the planar baseline")

    def at(self, point: Sequence[float]) -> tuple[float, float]:
        """``(loss, accuracy)`` at a grid point."""
        i = self._index(point)
        return self.loss[i], self.accuracy[i]

    def vertices(self) -> tuple[list[float], list[float]]:
        """The three vertex losses and accuracies (model 0, 1, 2)."""
        pairs = [self.at(self._vertex(m)) for m in range(3)]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    def baseline(self) -> tuple[list[float], list[float]]:
        """The planar baselines ``sum_m w_m L_m`` and ``sum_m w_m acc_m`` at every point."""
        loss_v, acc_v = self.vertices()
        return ([sum(w[m] * loss_v[m] for m in range(3)) for w in self.weights],
                [sum(w[m] * acc_v[m] for m in range(3)) for w in self.weights])

    def loss_gap(self) -> list[float]:
        """``L(w) - sum_m w_m L_m`` at every point (positive: above the plane)."""
        return [x - b for x, b in zip(self.loss, self.baseline()[0])]

    def accuracy_gap(self) -> list[float]:
        """``sum_m w_m acc_m - acc(w)`` at every point (positive: accuracy dips below the plane)."""
        return [b - x for x, b in zip(self.accuracy, self.baseline()[1])]

    def summary(self) -> dict[str, Any]:
        """Maxima of the gaps (with where they are reached), and the centroid's values.

        >>> s = Surface([[1, 0, 0], [0, 1, 0], [0, 0, 1], CENTROID], [1.0, 1.0, 1.0, 1.5], [1.0, 1.0, 1.0, 0.5])
        >>> s.summary()["max_loss_gap"], s.summary()["centroid_accuracy"]
        (0.5, 0.5)
        """
        loss_gap, acc_gap = self.loss_gap(), self.accuracy_gap()
        i = max(range(len(loss_gap)), key=loss_gap.__getitem__)
        j = max(range(len(acc_gap)), key=acc_gap.__getitem__)
        out = {"max_loss_gap": loss_gap[i], "max_loss_gap_at": self.weights[i],
               "max_accuracy_gap": acc_gap[j], "max_accuracy_gap_at": self.weights[j]}
        try:
            c = self._index(CENTROID)
        except UsageError:
            return out
        return {**out, "centroid_loss": self.loss[c], "centroid_accuracy": self.accuracy[c],
                "centroid_loss_gap": loss_gap[c], "centroid_accuracy_gap": acc_gap[c]}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable record, tagged with its format (derived gaps included for readers)."""
        return {"format": SURFACE_FORMAT, **asdict(self), "loss_gap": self.loss_gap(),
                "accuracy_gap": self.accuracy_gap(), "summary": self.summary()}

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> "Surface":
        """The surface a :meth:`to_dict` record describes (derived entries are recomputed, not read)."""
        record = dict(record)
        fmt = record.pop("format", SURFACE_FORMAT)
        if fmt != SURFACE_FORMAT:
            raise UsageError(f"record format '{fmt}' is not a simplex surface ({SURFACE_FORMAT})")
        for derived in ("loss_gap", "accuracy_gap", "summary"):
            record.pop(derived, None)
        return cls(**record)

    def save(self, path: str | Path) -> Path:
        """Write the record as JSON to ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Surface":
        """Read a surface written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text()))


def simplex_surface(model: torch.nn.Module, states: Sequence[State], dataset: Dataset | str, *,
                    resolution: int = 9, split: str = "test", labels: Sequence[str] | None = None,
                    batch_size: int | None = None, device: torch.device | str | None = None,
                    max_batches: int | None = None, progress: Callable[[int, int], None] | None = None) -> Surface:
    """Evaluate ``sum_m w_m states[m]`` of three state dicts on :func:`simplex_grid` ``(resolution)``.

    Each point is loaded into ``model`` (same architecture) and evaluated with
    :func:`symdsl.evaluate.evaluate` (``batch_size``, ``device``, ``max_batches`` go there);
    the model's own weights are restored afterwards. ``progress(done, points)`` after each point.

    >>> import torch
    >>> from symdsl.data import load_dataset
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    >>> s = dict(model.state_dict())
    >>> surface = simplex_surface(model, [s, s, s], load_dataset("digits"), resolution=3)
    >>> len(surface.weights), max(abs(g) for g in surface.loss_gap()) < 1e-5   # one model: flat
    (10, True)
    """
    if len(states) != 3:
        raise UsageError(f"a simplex surface needs exactly three models, got {len(states)}")
    dataset = load_dataset(dataset)
    labels = list(labels) if labels is not None else [f"model {m}" for m in range(3)]
    points = simplex_grid(resolution)
    original = {key: value.detach().clone() for key, value in model.state_dict().items()}
    states = [_unaliased(model, s) for s in states]   # loading a point must not overwrite an endpoint
    loss, accuracy = [], []
    try:
        for done, w in enumerate(points, start=1):
            model.load_state_dict(weighted_average(states, w, names=labels))
            metrics = evaluate(model, dataset, split, batch_size=batch_size, device=device, max_batches=max_batches)
            loss.append(metrics["loss"])
            accuracy.append(metrics["accuracy"])
            if progress is not None:
                progress(done, len(points))
    finally:
        model.load_state_dict(original)
    return Surface(points, loss, accuracy, split=split, dataset=dataset.name, labels=labels,
                   info={"resolution": int(resolution), "max_batches": max_batches})


def surfaces_record(surfaces: Mapping[str, Surface], *, info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A JSON-serialisable record of labelled surfaces (e.g. vanilla / universe / refined).

    >>> s = Surface([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], [1.0, 2.0, 3.0], [0.9, 0.8, 0.7])
    >>> read_surfaces(surfaces_record({"vanilla": s}))["vanilla"] == s
    True
    """
    return {"format": REPORT_FORMAT, "info": dict(info or {}),
            "surfaces": {label: surface.to_dict() for label, surface in surfaces.items()}}


def read_surfaces(record: Mapping[str, Any]) -> dict[str, Surface]:
    """The labelled surfaces of a :func:`surfaces_record` record."""
    if record.get("format") != REPORT_FORMAT:
        raise UsageError(f"record format '{record.get('format')}' is not a simplex report ({REPORT_FORMAT})")
    return {label: Surface.from_dict(entry) for label, entry in record["surfaces"].items()}
