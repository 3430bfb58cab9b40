"""JSON records of labelled curves with their barriers (what ``symdsl barrier --json`` writes)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from ..errors import UsageError
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


def read_curves(record: Mapping[str, Any] | str | Path) -> dict[str, Curve]:
    """The labelled curves of a record: a :func:`curves_record` value, or the path of a JSON file
    that holds one under ``"curves"`` (what ``symdsl barrier --json`` and the demo write).
    Barriers are recomputed from the curves, not read.

    >>> c = Curve([0.0, 1.0], [1.0, 1.0], [0.9, 0.9])
    >>> read_curves(curves_record({"x": c}))["x"] == c
    True
    """
    if isinstance(record, (str, Path)):
        source = Path(record)
        try:
            record = json.loads(source.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UsageError(f"cannot read curves from '{source}': {exc}") from None
    if not isinstance(record, Mapping) or not isinstance(record.get("curves"), Mapping):
        raise UsageError("a curves record is a mapping with a 'curves' entry (label -> curve), as "
                         "`symdsl barrier --json` writes")
    return {label: Curve.from_dict(entry) for label, entry in record["curves"].items()}


def save_json(record: Mapping[str, Any], path: str | Path) -> Path:
    """Write a record as indented JSON; returns the path."""
    path = Path(path)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path
