"""Heat maps of simplex surfaces: loss gap (top row) and accuracy gap (bottom row), one column per
alignment, on the triangle of the three models, with the zero contour drawn."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

from ..errors import UsageError
from .simplex import Surface

# triangle corners of model 0, 1, 2: a point w sits at sum_m w_m * corner_m
CORNERS = ((0.0, 0.0), (1.0, 0.0), (0.5, math.sqrt(3.0) / 2.0))


def to_plane(weights: Sequence[Sequence[float]]) -> tuple[list[float], list[float]]:
    """Cartesian coordinates of barycentric points on the triangle :data:`CORNERS`.

    >>> to_plane([[0.0, 1.0, 0.0], [1/3, 1/3, 1/3]])[0]
    [1.0, 0.5]
    """
    xs = [sum(w[m] * CORNERS[m][0] for m in range(3)) for w in weights]
    ys = [sum(w[m] * CORNERS[m][1] for m in range(3)) for w in weights]
    return xs, ys


def plot_simplex(surfaces: Mapping[str, Surface], path: str | Path, *, title: str | None = None,
                 dpi: int = 120) -> Path:
    """Write a PNG: per label a triangle coloured by the loss gap (top) and the accuracy gap in
    percentage points (bottom), both relative to the planar baseline, on one diverging colour
    scale per row centred at 0 (red: worse than the plane), with the zero contour in black and
    the vertices labelled. Uses matplotlib's Agg canvas (no display, no pyplot state).

    >>> import tempfile, os
    >>> from symdsl.evaluate.simplex import Surface, simplex_grid
    >>> w = simplex_grid(3)
    >>> s = Surface(w, [1.0 + 4 * a * b - 0.1 * c for a, b, c in w], [0.9] * len(w))
    >>> plot_simplex({"vanilla": s}, os.path.join(tempfile.mkdtemp(), "s.png")).stat().st_size > 1000
    True
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.tri import Triangulation

    if not surfaces:
        raise UsageError("plot_simplex needs at least one surface")
    labels = list(surfaces)
    rows = [("loss gap", lambda s: s.loss_gap()),
            ("accuracy gap (points)", lambda s: [100.0 * g for g in s.accuracy_gap()])]
    figure = Figure(figsize=(3.6 * len(labels) + 1.2, 6.6), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, len(labels), squeeze=False)
    for row, (name, values_of) in enumerate(rows):
        values = {label: values_of(surfaces[label]) for label in labels}
        # one symmetric scale per row, so the panels compare directly and 0 is the neutral colour
        bound = max(max(abs(v) for v in vs) for vs in values.values()) or 1e-12
        norm = Normalize(-bound, bound)
        image = None
        for col, label in enumerate(labels):
            surface, ax = surfaces[label], axes[row][col]
            xs, ys = to_plane(surface.weights)
            tri = Triangulation(xs, ys)
            image = ax.tripcolor(tri, values[label], shading="gouraud", cmap="RdBu_r", norm=norm)
            if min(values[label]) < 0.0 < max(values[label]):
                ax.tricontour(tri, values[label], levels=[0.0], colors="black", linewidths=1.2)
            corners_x, corners_y = zip(*CORNERS, CORNERS[0])
            ax.plot(corners_x, corners_y, color="black", linewidth=0.8)
            ax.scatter(xs, ys, s=3, color="black", alpha=0.4)
            for m, (cx, cy) in enumerate(CORNERS):
                ax.annotate(surface.labels[m], (cx, cy), xytext=(0, 6 if m == 2 else -12), textcoords="offset points",
                            ha="center", fontsize=8)
            peak = max(values[label])
            ax.set_title(f"{label}\nmax {name} {peak:.3g}", fontsize=9)
            ax.set_aspect("equal")
            ax.set_xlim(-0.12, 1.12)
            ax.set_ylim(-0.12, CORNERS[2][1] + 0.1)
            ax.axis("off")
        figure.colorbar(image, ax=list(axes[row]), shrink=0.8, label=name)
    split = next(iter(surfaces.values())).split
    subtitle = f"{split} loss and accuracy minus the planar baseline (red: worse than the plane)"
    figure.suptitle(f"{title}\n{subtitle}" if title else subtitle)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi, format="png")
    return path
