"""Plot labelled interpolation curves: loss and accuracy along the path from A to B.

The x axis is the paper's ``t`` (theta(t) = (1 - t) theta_A + t theta_B: 0 is model A, 1 is
model B); a :class:`~symdsl.evaluate.curve.Curve` stores ``lambda = 1 - t`` (lambda 1 is A). Each
curve's barrier (Theus et al.'s definition: the largest gap above the straight line between the
endpoints) is marked where it is reached and quoted in the legend, which sits below the plots so
that it never covers a curve. The file format follows the extension: ``.png``, ``.pdf`` or ``.svg``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

from ..errors import UsageError
from .barrier import barrier
from .curve import Curve

FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg"}


def figure_format(path: str | Path) -> str:
    """The matplotlib format a file name asks for (its extension), or a clear error.

    >>> figure_format("out/curves.pdf")
    'pdf'
    >>> figure_format("curves.jpeg")
    Traceback (most recent call last):
    ...
    symdsl.errors.UsageError: cannot write a figure to 'curves.jpeg': the extension must be one of .png, .pdf, .svg
    """
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise UsageError(f"cannot write a figure to '{path}': the extension must be one of {', '.join(FORMATS)}")
    return FORMATS[suffix]


def plot_curves(curves: Mapping[str, Curve], path: str | Path, *, title: str | None = None,
                dpi: int = 120) -> Path:
    """Write loss (left) and accuracy (right) against t (0 = A, 1 = B), one line per label.

    Endpoints are drawn as larger markers, each curve's loss barrier as a vertical segment from
    the straight line between the endpoints up to the curve, with its value in the legend. Uses
    matplotlib's Agg canvas directly, so no display and no pyplot global state are involved.

    >>> import tempfile, os
    >>> c = Curve([0.0, 0.5, 1.0], [0.3, 1.2, 0.3], [0.95, 0.4, 0.94])
    >>> out = plot_curves({"vanilla": c}, os.path.join(tempfile.mkdtemp(), "curve.svg"))
    >>> out.read_text()[:5], out.stat().st_size > 1000
    ('<?xml', True)
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fmt = figure_format(path)
    figure = Figure(figsize=(11, 4.8), layout="constrained")
    FigureCanvasAgg(figure)
    loss_axes, acc_axes = figure.subplots(1, 2)
    for label, curve in curves.items():
        t = [1.0 - lam for lam in curve.lambdas]                 # the paper's direction: A at 0
        accuracy = [100.0 * a for a in curve.accuracy]
        found = barrier(curve)
        line, = loss_axes.plot(t, curve.loss, marker=".",
                               label=f"{label} (loss barrier {found.loss:.3f}, acc. {100.0 * found.accuracy:.1f} pts)")
        colour = line.get_color()
        acc_axes.plot(t, accuracy, marker=".", color=colour)
        ends = [0, len(t) - 1]                                    # the two models, bigger markers
        loss_axes.scatter([t[i] for i in ends], [curve.loss[i] for i in ends], s=60, color=colour,
                          edgecolors="black", zorder=3)
        acc_axes.scatter([t[i] for i in ends], [accuracy[i] for i in ends], s=60, color=colour,
                         edgecolors="black", zorder=3)
        # the barrier: from the straight line between the endpoints up to the curve
        at = curve.lambdas.index(found.loss_lambda)
        loss_a, _ = curve.at(1.0)
        loss_b, _ = curve.at(0.0)
        straight = found.loss_lambda * loss_a + (1.0 - found.loss_lambda) * loss_b
        if found.loss > 0:
            loss_axes.plot([t[at], t[at]], [straight, curve.loss[at]], color=colour, linestyle="--", linewidth=1)
    split = next(iter(curves.values())).split if curves else "test"
    for axes, name in ((loss_axes, f"{split} loss"), (acc_axes, f"{split} accuracy (%)")):
        axes.set_xlabel("t  (0 = model A, 1 = model B)")
        axes.set_ylabel(name)
        axes.set_xlim(-0.03, 1.03)
        axes.grid(alpha=0.3)
    if curves:
        figure.legend(loc="outside lower center", ncols=min(2, len(curves)), fontsize="small", frameon=False)
    if title:
        figure.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi, format=fmt)
    return path
