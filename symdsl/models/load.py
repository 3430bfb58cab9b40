"""Load a model from a REF: a Hugging Face save_pretrained folder, ``timm:NAME``, or ``module:factory``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import torch

from ..errors import UsageError
from .build import import_object, quiet_transformers
from .loader import ModelLoader
from .save import MODEL_RECORD, load_symdsl_folder


def load_model(ref: str, *, checkpoint: str | None = None, loaders: Iterable[ModelLoader] = ()) -> torch.nn.Module:
    """Load a model for checking or alignment.

    REF forms: a folder written by ``save_pretrained`` (its config.json names the class) or by
    :func:`symdsl.models.save_model` (``symdsl_model.json``),
    ``timm:MODEL_NAME`` (random init unless ``checkpoint`` names a safetensors/pt file; also written
    ``timm:MODEL_NAME@weights.safetensors``), or
    ``package.module:factory`` (called with no arguments).
    ``loaders``: plugin loaders (``registries.model_loaders.values()``), asked first, in order.
    """
    for loader in loaders:
        if loader.can_load(ref):
            model = loader.load(ref, checkpoint)
            if not isinstance(model, torch.nn.Module):
                raise UsageError(f"model loader '{loader.name}' returned {type(model).__name__} for '{ref}'")
            return model.eval()
    path = Path(ref)
    if not path.exists() and "@" in ref and checkpoint is None:   # timm:NAME@weights.safetensors
        ref, checkpoint = ref.rsplit("@", 1)
        if not Path(checkpoint).is_file():
            raise UsageError(f"checkpoint file '{checkpoint}' does not exist")
    if path.is_dir() and (path / MODEL_RECORD).exists():
        return load_symdsl_folder(path)
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.exists():
            raise UsageError(f"{ref}: folder has neither config.json (save_pretrained) nor {MODEL_RECORD} (symdsl)")
        architectures = json.loads(config_file.read_text()).get("architectures") or []
        if not architectures:
            raise UsageError(f"{config_file}: no 'architectures' entry; cannot tell which model class to load")
        try:
            import transformers
        except ImportError:
            raise UsageError("loading a save_pretrained folder needs transformers: pip install 'symdsl[hf]'") from None
        cls = getattr(transformers, architectures[0], None)
        if cls is None:
            raise UsageError(f"{config_file}: transformers has no class '{architectures[0]}'")
        with quiet_transformers():
            model = cls.from_pretrained(str(path))
        return model.eval()
    if ref.startswith("timm:"):
        import timm

        name, kwargs = ref[5:], {}
        state = _read_checkpoint(checkpoint) if checkpoint else None
        if state is not None and "head.weight" in state:   # a fine-tuned head: build it with its own size
            kwargs["num_classes"] = int(state["head.weight"].shape[0])
        try:
            model = timm.create_model(name, pretrained=False, **kwargs)
        except RuntimeError as exc:
            raise UsageError(f"timm cannot build '{name}': {str(exc).splitlines()[0]}") from None
        if state is not None:
            try:
                model.load_state_dict(state)
            except RuntimeError as exc:
                raise UsageError(f"{checkpoint} does not fit timm model '{name}': {str(exc).splitlines()[0]}") from None
        model.symdsl_timm = {"name": name, "kwargs": kwargs}
        return model.eval()
    if ":" in ref:
        model = import_object(ref)()
        if not isinstance(model, torch.nn.Module):
            raise UsageError(f"{ref} returned {type(model).__name__}, not a torch.nn.Module")
        if checkpoint:
            model.load_state_dict(_read_checkpoint(checkpoint))
        return model.eval()
    if not path.exists() and ("/" in ref or ref.startswith(".")):
        raise UsageError(f"model folder '{ref}' does not exist")
    raise UsageError(f"cannot load model '{ref}': give a save_pretrained folder, timm:NAME or module:factory")


def _read_checkpoint(file: str) -> dict:
    if file.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(file)
    return torch.load(file, map_location="cpu", weights_only=True)
