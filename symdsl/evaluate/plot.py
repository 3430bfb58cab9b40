"""Plot labelled interpolation curves: loss and accuracy against lambda, side by side, as a PNG."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

from .curve import Curve


def plot_curves(curves: Mapping[str, Curve], path: str | Path, *, title: str | None = None,
                dpi: int = 120) -> Path:
    """Write a PNG with loss (left) and accuracy (right) against lambda, one line per label.

    Endpoints (lambda 0 = model B, lambda 1 = model A) are drawn as larger markers. Uses
    matplotlib's Agg canvas directly, so no display and no pyplot global state are involved.

    >>> import tempfile, os
    >>> c = Curve([0.0, 0.5, 1.0], [0.3, 1.2, 0.3], [0.95, 0.4, 0.94])
    >>> out = plot_curves({"vanilla": c}, os.path.join(tempfile.mkdtemp(), "curve.png"))
    >>> out.stat().st_size > 1000
    True
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(figure)
    loss_axes, acc_axes = figure.subplots(1, 2)
    for label, curve in curves.items():
        accuracy = [100.0 * a for a in curve.accuracy]
        line, = loss_axes.plot(curve.lambdas, curve.loss, marker=".", label=label)
        acc_axes.plot(curve.lambdas, accuracy, marker=".", label=label, color=line.get_color())
        # endpoints: first and last grid points (lambda 0 and 1), same colour, bigger markers
        ends = [0, len(curve.lambdas) - 1]
        loss_axes.scatter([curve.lambdas[i] for i in ends], [curve.loss[i] for i in ends],
                          s=60, color=line.get_color(), edgecolors="black", zorder=3)
        acc_axes.scatter([curve.lambdas[i] for i in ends], [accuracy[i] for i in ends],
                         s=60, color=line.get_color(), edgecolors="black", zorder=3)
    split = next(iter(curves.values())).split if curves else "test"
    for axes, name in ((loss_axes, f"{split} loss"), (acc_axes, f"{split} accuracy (%)")):
        axes.set_xlabel("lambda  (0 = model B, 1 = model A)")
        axes.set_ylabel(name)
        axes.set_xlim(-0.03, 1.03)
        axes.grid(alpha=0.3)
        if curves:
            axes.legend()
    if title:
        figure.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi, format="png")
    return path
