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
from typing import Any

import torch

from .._version import __version__
from ..errors import UsageError

MODEL_RECORD = "symdsl_model.json"
PROVENANCE = "symdsl.json"


def is_transformers_model(model: torch.nn.Module) -> bool:
    return type(model).__module__.startswith("transformers.") and hasattr(model, "save_pretrained")


def save_model(model: torch.nn.Module, folder: str | Path, provenance: dict[str, Any] | None = None) -> Path:
    """Write ``model`` to ``folder`` (created) as a standard checkpoint plus ``symdsl.json``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if is_transformers_model(model):
        model.save_pretrained(folder)
    else:
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
    if provenance is not None:
        (folder / PROVENANCE).write_text(json.dumps({"symdsl": __version__, **provenance}, indent=2, default=str) + "\n")
    return folder


def _unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors sharing memory; give each name its own copy."""
    seen: dict[int, str] = {}
    out = {}
    for name, tensor in state.items():
        ptr = tensor.untyped_storage().data_ptr()
        out[name] = tensor.clone() if ptr in seen else tensor
        seen.setdefault(ptr, name)
    return out


def load_symdsl_folder(folder: Path) -> torch.nn.Module:
    """Rebuild a model saved by :func:`save_model` for a non-transformers class."""
    from safetensors.torch import load_file

    from .build import import_object

    record = json.loads((folder / MODEL_RECORD).read_text())
    if "timm" in record:
        import timm

        model = timm.create_model(record["timm"], pretrained=False, **record.get("config", {}))
        model.symdsl_timm = {"name": record["timm"], "kwargs": record.get("config", {})}
    else:
        model = import_object(record["class"])(**record.get("config", {}))
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    if "timm" not in record:
        model.symdsl_config = record.get("config", {})
    return model.eval()
