"""The model card (``README.md``) every symdsl output carries, in the Hugging Face style.

YAML front matter the Hub reads (``base_model``: the inputs as given, ``base_model_relation:
merge`` for merges, ``library_name`` when the checkpoint is a transformers or timm one, ``tags``)
and a body saying how the folder was made: method, spec, matcher and options, the barrier where
one was measured, the exact command line and the symdsl version. Everything in it comes from the
record that also goes into ``symdsl.json``; the front matter is written with ``yaml.safe_dump``,
so any REF (a path with quotes or colons) stays valid YAML.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Mapping

import yaml

from .._version import __version__
from .origin import Origin

CARD = "README.md"
TAGS = {"align": ["symdsl", "model-merging", "model-alignment"], "merge": ["symdsl", "model-merging", "merge"],
        "train": ["symdsl"]}
TITLE = {"align": "Aligned model", "merge": "Merged model", "train": "Trained model"}
SUMMARY = {"align": "Model B aligned to model A modulo their parameter-space symmetries: a standard checkpoint of "
                    "B's class computing B's function, with its weights moved into A's frame.",
           "merge": "A merge of the models below, each first aligned modulo their parameter-space symmetries.",
           "train": "A model trained by symdsl's benchmark recipes."}


def _barriers(record: Any, path: str = "") -> Iterator[str]:
    """Lines for every barrier the run measured: learned matching's held-out objective, simplex surfaces."""
    if isinstance(record, Mapping):
        if "best_validation" in record and "start_validation" in record:
            yield (f"{path or 'matching'}: validation barrier {record['start_validation']:.4g} at the start, "
                   f"{record['best_validation']:.4g} after learning (held-out split)")
        for label, surface in (record.get("surfaces") or {}).items():
            if isinstance(surface, Mapping) and "max_loss_gap" in surface:
                yield f"{label}: largest loss gap over the simplex {surface['max_loss_gap']:.4g}"
        for key, value in record.items():
            if key not in ("surfaces", "history", "start"):
                yield from _barriers(value, f"{path}.{key}" if path else key)
    elif isinstance(record, list):
        for index, value in enumerate(record):
            yield from _barriers(value, f"{path}[{index}]")


def _cell(value: Any) -> str:
    """A table cell: one line, its pipes escaped (an option's value may hold either)."""
    return " ".join(str(value).split()).replace("|", "\\|")


def _method(kind: str, record: Mapping[str, Any]) -> str:
    if kind == "align":
        lifted = " after lifting the narrower B into A's configuration" if "width_lift" in record else ""
        return f"alignment of B to A{lifted}"
    if kind == "merge":
        return f"{record.get('method', 'pairwise')} matching, then the '{record.get('merger', 'average')}' merger" + \
            (f" with weights {record['weights']}" if record.get("weights") else " (equal weights)")
    return str(record.get("recipe", kind))


def model_card(kind: str, record: Mapping[str, Any], origin: Origin, *, library_name: str | None = None,
               dtype: str | None = None, companions: list[str] | None = None) -> str:
    """The text of ``README.md`` for an output of ``kind`` (``align``, ``merge`` or ``train``).

    ``record``: what goes into ``symdsl.json`` (spec, matcher, options, the command line ...);
    ``origin``: the inputs (:mod:`symdsl.models.origin`); ``library_name``: ``transformers`` or
    ``timm`` when the checkpoint loads with that library; ``dtype``: the dtype written;
    ``companions``: the tokenizer and other files copied from the layout input.

    >>> text = model_card("merge", {"spec": "hf-gpt2", "matcher": "weight", "merger": "average",
    ...                             "command_line": "symdsl merge org/a org/b -o out"},
    ...                   Origin(("org/a", "org/b")), library_name="transformers")
    >>> front = yaml.safe_load(text.split("---")[1])
    >>> front["base_model"], front["library_name"], front["tags"][:2]
    (['org/a', 'org/b'], 'transformers', ['symdsl', 'model-merging'])
    """
    front: dict[str, Any] = {}
    if origin.base_models:
        front["base_model"] = origin.base_models
        if kind == "merge":
            front["base_model_relation"] = "merge"
    if library_name:
        front["library_name"] = library_name
    front["tags"] = TAGS.get(kind, ["symdsl"])
    matcher = record.get("matcher") or next((a.get("matcher") for a in record.get("alignments") or []
                                             if isinstance(a, Mapping)), None)
    options = record.get("options") or {}
    rows = [("method", _method(kind, record)), ("spec", record.get("spec")), ("matcher", matcher),
            ("options", ", ".join(f"{k}={json.dumps(v, default=str)}" for k, v in options.items()) or "none"),
            ("written dtype", dtype), ("symdsl", __version__)]
    inputs = [f"- `{ref}`" + (" (this folder keeps its checkpoint layout and tokenizer)" if i == origin.layout
                                and kind != "train" and len(origin.refs) > 1 else "")
              for i, ref in enumerate(origin.refs) if ref]
    command = record.get("command_line") or f"Python: symdsl.{kind}(...)"
    barriers = list(_barriers(record)) or ["not measured by this run (`symdsl barrier A B --data ...` measures it)"]
    notes = [f"- {note}" for note in record.get("notes") or []]
    body = [f"# {TITLE.get(kind, 'symdsl output')}", "", SUMMARY.get(kind, ""), "",
            "| | |", "|---|---|", *(f"| {key} | {_cell(value)} |" for key, value in rows if value is not None), "",
            *(["## Inputs", "", *inputs, ""] if inputs else []),
            "## Barrier", "", *(f"- {line}" for line in barriers), "",
            "## How it was made", "", "```", command, "```", "",
            *(["## Notes", "", *notes, ""] if notes else []),
            *(["## Files", "", "Copied unchanged from the input that keeps its layout: "
               + ", ".join(f"`{name}`" for name in companions) + ".", ""] if companions else []),
            "`symdsl.json` holds the full record of the run (matcher objective, timings, transforms' sites).", ""]
    header = yaml.safe_dump(front, sort_keys=False, allow_unicode=True, default_flow_style=None)
    return "---\n" + header + "---\n\n" + "\n".join(body)


def write_card(folder: Path, kind: str, record: Mapping[str, Any], origin: Origin, **details: Any) -> None:
    """Write :func:`model_card` into ``folder/README.md``."""
    (Path(folder) / CARD).write_text(model_card(kind, record, origin, **details), encoding="utf-8")
