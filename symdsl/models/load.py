"""Load a model from a REF: a save_pretrained folder, a Hub id, ``timm:NAME``, or ``module:factory``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import torch

from ..errors import UsageError
from .build import import_object, quiet_transformers
from .checkpoint import completeness_error, load_complete, read_state
from .hub import hub_folder, parse_hub_ref
from .loader import ModelLoader
from .output import is_partial
from .save import MODEL_RECORD, load_symdsl_folder


def load_model(ref: str, *, checkpoint: str | None = None, loaders: Iterable[ModelLoader] = (),
               trust_code: bool = False) -> torch.nn.Module:
    """Load a model for checking or alignment.

    REF forms: a folder written by ``save_pretrained`` (its config.json names the class) or by
    :func:`symdsl.models.save_model` (``symdsl_model.json``),
    a Hugging Face Hub id (``org/name``, ``org/name@revision``, bare ``gpt2``; fetched into the Hub
    cache, ``HF_HUB_OFFLINE`` honoured, then loaded as a folder: :mod:`symdsl.models.hub`) when no
    local path of that name exists (a local folder always wins),
    ``timm:MODEL_NAME`` (random init unless ``checkpoint`` names a safetensors/pt file; also written
    ``timm:MODEL_NAME@weights.safetensors``), or
    ``package.module:factory`` (called with no arguments: the caller's own code, named by the caller).
    ``loaders``: plugin loaders (``registries.model_loaders.values()``), asked first, in order.
    A folder's record may name only model classes of known libraries and of ``loaders``
    unless ``trust_code`` (:mod:`symdsl.models.trust`); checkpoints must be complete
    (:mod:`symdsl.models.checkpoint`). The model remembers the REF (``symdsl_ref``) and the
    folder it came from (``symdsl_source``: for a Hub id, its snapshot), so an output can be
    refused when it would overwrite it, name its base models and carry its tokenizer
    (:mod:`symdsl.models.origin`).

    >>> load_model("./no/such/folder")
    Traceback (most recent call last):
    ...
    symdsl.errors.UsageError: model folder './no/such/folder' does not exist
    """
    loaders = list(loaders)
    source = None
    if not Path(ref).exists() and not any(loader.can_load(ref) for loader in loaders) \
            and parse_hub_ref(ref) is not None:
        source = hub_folder(ref)
        model = _load_folder(source, loaders, trust_code)    # the same rules as a local folder
    else:
        model = _load(ref, checkpoint, loaders, trust_code)
        source = Path(ref) if Path(ref).exists() else None
    model.symdsl_ref = ref
    if source is not None:
        model.symdsl_source = str(Path(source).resolve())
    return model


def _load(ref: str, checkpoint: str | None, loaders: list[ModelLoader], trust_code: bool) -> torch.nn.Module:
    for loader in loaders:
        if loader.can_load(ref):
            model = loader.load(ref, checkpoint)
            if not isinstance(model, torch.nn.Module):
                raise UsageError(f"model loader '{loader.name}' returned {type(model).__name__} for '{ref}'")
            return model.eval()
    path = Path(ref)
    if not path.exists() and "@" in ref and ":" in ref and checkpoint is None:   # timm:NAME@weights.safetensors
        ref, checkpoint = ref.rsplit("@", 1)
        if not Path(checkpoint).is_file():
            raise UsageError(f"checkpoint file '{checkpoint}' does not exist")
    if path.is_dir():
        return _load_folder(path, loaders, trust_code)
    if path.is_file():
        raise UsageError(f"'{ref}' is a file; give the model's folder, timm:NAME@{ref} or module:factory "
                         "with --checkpoint")
    if ref.startswith("timm:"):
        import timm

        name, kwargs = ref[5:], {}
        state = read_state(checkpoint) if checkpoint else None
        if state is not None and "head.weight" in state:   # a fine-tuned head: build it with its own size
            kwargs["num_classes"] = int(state["head.weight"].shape[0])
        try:
            model = timm.create_model(name, pretrained=False, **kwargs)
        except RuntimeError as exc:
            raise UsageError(f"timm cannot build '{name}': {str(exc).splitlines()[0]}") from None
        if state is not None:
            load_complete(model, state, str(checkpoint), f"timm model '{name}'")
        model.symdsl_timm = {"name": name, "kwargs": kwargs}
        return model.eval()
    if ":" in ref:
        model = import_object(ref)()
        if not isinstance(model, torch.nn.Module):
            raise UsageError(f"{ref} returned {type(model).__name__}, not a torch.nn.Module")
        if checkpoint:
            load_complete(model, read_state(checkpoint), checkpoint)
        if getattr(model, "symdsl_config", None) is None:
            model.symdsl_factory = ref     # how an output of it is rebuilt (symdsl.models.save)
        return model.eval()
    if not path.exists() and ("/" in ref or ref.startswith(".")):
        raise UsageError(f"model folder '{ref}' does not exist")
    raise UsageError(f"cannot load model '{ref}': give a save_pretrained folder, timm:NAME or module:factory")


def _load_folder(path: Path, loaders: list[ModelLoader], trust_code: bool) -> torch.nn.Module:
    if is_partial(path):
        raise UsageError(f"{path}: the unfinished output of an interrupted symdsl run (its record is still "
                         "'*.partial'); delete it and run the command again")
    config_file = path / "config.json"
    has_record = (path / MODEL_RECORD).exists()
    if has_record and config_file.exists():   # symdsl writes one or the other: something was planted or left over
        raise UsageError(f"{path}: folder has both config.json (save_pretrained) and {MODEL_RECORD} (symdsl); "
                         "remove the one that does not belong to these weights")
    if has_record:
        modules = [m for loader in loaders for m in getattr(loader, "record_modules", ())]
        return load_symdsl_folder(path, trust_code=trust_code, record_modules=modules)
    if not config_file.exists():
        raise UsageError(f"{path}: folder has neither config.json (save_pretrained) nor {MODEL_RECORD} (symdsl)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{config_file}: not valid JSON ({exc})") from None
    architectures = (config.get("architectures") if isinstance(config, dict) else None) or []
    if not isinstance(architectures, list) or not architectures or not isinstance(architectures[0], str):
        raise UsageError(f"{config_file}: no 'architectures' entry; cannot tell which model class to load")
    try:
        import transformers
    except ImportError:
        raise UsageError("loading a save_pretrained folder needs transformers: pip install 'symdsl[hf]'") from None
    cls = getattr(transformers, architectures[0], None)
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module) and hasattr(cls, "from_pretrained")):
        raise UsageError(f"{config_file}: architectures: transformers has no model class '{architectures[0]}'")
    try:
        with quiet_transformers():   # its load report is replaced by the check below
            # mismatches are collected and reported below, naming the tensor (the library's report is silenced)
            model, info = cls.from_pretrained(str(path), output_loading_info=True, ignore_mismatched_sizes=True)
    except (OSError, ValueError, TypeError, RuntimeError, KeyError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{path}: transformers cannot load this folder: {first[:300]}") from None
    error = completeness_error(str(path), info.get("missing_keys", ()), info.get("unexpected_keys", ()))
    if error is None and info.get("mismatched_keys"):
        first = sorted(info["mismatched_keys"], key=str)[0]
        name, shapes = (first[0], f": {tuple(first[1])} in the checkpoint, {tuple(first[2])} in config.json") \
            if isinstance(first, tuple) and len(first) == 3 else (str(first), "")
        more = len(info["mismatched_keys"]) - 1
        error = UsageError(f"{path}: tensor '{name}' does not fit the configuration{shapes}"
                           + (f" ({more} more)" if more else "") + "; config.json and the weights disagree")
    if error is not None:
        raise error
    return model.eval()
