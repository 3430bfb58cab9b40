"""Save models as standard checkpoints, with a small JSON record of how they were made.

- transformers models: ``save_pretrained(folder)`` (config + safetensors), loadable by
  ``from_pretrained`` as usual.
- other models (timm, plain torch): ``model.safetensors`` plus ``symdsl_model.json`` naming the
  class and its constructor arguments (``model.symdsl_config``), so :func:`load_model` and
  anyone with the class can rebuild it.
Every folder also gets ``symdsl.json``: the command, spec, matcher and inputs that produced it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import torch

from .._version import __version__
from ..errors import UsageError
from .output import hide_records, staged_output

MODEL_RECORD = "symdsl_model.json"
PROVENANCE = "symdsl.json"


def is_transformers_model(model: torch.nn.Module) -> bool:
    return type(model).__module__.startswith("transformers.") and hasattr(model, "save_pretrained")


def write_model(model: torch.nn.Module, folder: Path) -> None:
    """Write ``model``'s checkpoint files into an existing ``folder`` (no provenance, not atomic)."""
    if is_transformers_model(model):
        model.save_pretrained(folder)
        return
    from safetensors.torch import save_file

    config = getattr(model, "symdsl_config", None)
    timm_name = getattr(model, "symdsl_timm", None)
    if config is None and timm_name is None:
        raise UsageError(f"cannot save a {type(model).__name__} without its constructor arguments: set "
                         "model.symdsl_config = {...} (the keyword arguments that rebuild it)")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(_unshared(state), str(folder / "model.safetensors"))
    record = ({"timm": timm_name["name"], "config": timm_name["kwargs"]} if config is None else
              {"class": f"{type(model).__module__}:{type(model).__qualname__}", "config": config})
    (folder / MODEL_RECORD).write_text(json.dumps(record, indent=2, default=str) + "\n")


def write_provenance(folder: Path, provenance: dict[str, Any]) -> None:
    """Write ``symdsl.json`` (the version and how the folder was made) into ``folder``."""
    (folder / PROVENANCE).write_text(json.dumps({"symdsl": __version__, **provenance}, indent=2, default=str) + "\n")


def save_model(model: torch.nn.Module, folder: str | Path, provenance: dict[str, Any] | None = None, *,
               overwrite: bool = False) -> Path:
    """Write ``model`` to ``folder`` as a standard checkpoint plus ``symdsl.json``, atomically.

    An existing non-empty ``folder`` is refused unless ``overwrite``; the files are written
    beside it and moved into place at the end (:func:`symdsl.models.output.staged_output`), so
    an interrupted save leaves no folder that loads as a model.

    >>> import tempfile, pathlib, torch
    >>> net = torch.nn.Linear(2, 3); net.symdsl_config = {"in_features": 2, "out_features": 3}
    >>> out = save_model(net, pathlib.Path(tempfile.mkdtemp()) / "net", {"command": "example"})
    >>> sorted(p.name for p in out.iterdir())
    ['model.safetensors', 'symdsl.json', 'symdsl_model.json']
    """
    with staged_output(folder, overwrite=overwrite) as stage:
        write_model(model, stage)
        hide_records(stage)
        if provenance is not None:
            write_provenance(stage, provenance)
    return Path(folder)


def _unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors sharing memory; give each name its own copy."""
    seen: dict[int, str] = {}
    out = {}
    for name, tensor in state.items():
        ptr = tensor.untyped_storage().data_ptr()
        out[name] = tensor.clone() if ptr in seen else tensor
        seen.setdefault(ptr, name)
    return out


def load_symdsl_folder(folder: Path, *, trust_code: bool = False, record_modules: Iterable[str] = ()) -> torch.nn.Module:
    """Rebuild a model saved by :func:`save_model` for a non-transformers class.

    The record may name only model classes of known libraries or of ``record_modules`` unless
    ``trust_code`` (:mod:`symdsl.models.trust`); the weights must fit exactly and keep their dtype.
    """
    from .checkpoint import load_complete, read_state
    from .trust import record_class

    where = folder / MODEL_RECORD
    try:
        record = json.loads(where.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{where}: not valid JSON ({exc}); the folder was not written by symdsl or was edited") from None
    if not isinstance(record, dict) or not isinstance(record.get("config", {}), dict):
        raise UsageError(f"{where}: expected {{\"class\" or \"timm\": ..., \"config\": {{...}}}}; the folder was not "
                         "written by symdsl or was edited")
    config = record.get("config", {})
    try:
        if "timm" in record:
            import timm

            if not isinstance(record["timm"], str):
                raise UsageError(f"{where}: timm: expected a timm model name, got {record['timm']!r}")
            model = timm.create_model(record["timm"], pretrained=False, **config)
            model.symdsl_timm = {"name": record["timm"], "kwargs": config}
        else:
            cls = record_class(record.get("class"), f"{where}: class", trust_code=trust_code, modules=record_modules)
            model = cls(**config)
    except (TypeError, ValueError, RuntimeError, AssertionError) as exc:
        raise UsageError(f"{where}: config does not build the model: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None
    load_complete(model, read_state(folder / "model.safetensors"), str(folder / "model.safetensors"))
    if "timm" not in record:
        model.symdsl_config = config
    return model.eval()
