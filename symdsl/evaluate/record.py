"""JSON records of labelled curves with their barriers (what ``symdsl barrier --json`` writes)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from .barrier import DEFINITIONS, barrier
from .curve import Curve

REPORT_FORMAT = "symdsl.barrier-report/1"


def curves_record(curves: Mapping[str, Curve], *, definitions: tuple[str, ...] = DEFINITIONS,
                  info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A JSON-serialisable record: every curve (by label) with its barriers under each definition.

    >>> c = Curve([0.0, 0.5, 1.0], [1.0, 2.0, 1.0], [0.9, 0.5, 0.9], dataset="digits")
    >>> record = curves_record({"vanilla": c})
    >>> record["curves"]["vanilla"]["barrier"]["linear"]["loss"]
    1.0
    """
    return {
        "format": REPORT_FORMAT,
        "info": dict(info or {}),
        "curves": {label: {**curve.to_dict(),
                           "barrier": {name: barrier(curve, name).to_dict() for name in definitions}}
                   for label, curve in curves.items()},
    }


def read_curves(record: Mapping[str, Any]) -> dict[str, Curve]:
    """The labelled curves of a :func:`curves_record` record (barriers are recomputed, not read).

    >>> c = Curve([0.0, 1.0], [1.0, 1.0], [0.9, 0.9])
    >>> read_curves(curves_record({"x": c}))["x"] == c
    True
    """
    return {label: Curve.from_dict(entry) for label, entry in record["curves"].items()}


def save_json(record: Mapping[str, Any], path: str | Path) -> Path:
    """Write a record as indented JSON; returns the path."""
    path = Path(path)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path
