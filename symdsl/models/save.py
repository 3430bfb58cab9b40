"""Save models as standard checkpoints, with a small JSON record of how they were made.

- transformers models: ``save_pretrained(folder)`` (config + safetensors), loadable by
  ``from_pretrained`` as usual.
- other models (timm, plain torch): ``model.safetensors`` plus ``symdsl_model.json`` naming the
  class and its constructor arguments (``model.symdsl_config``), so :func:`load_model` and
  anyone with the class can rebuild it.
Every output folder also gets ``symdsl.json`` (the command, spec, matcher and inputs that produced
it, written last), a model card (``README.md``, :mod:`symdsl.models.card`) and the companion files
of the input whose layout it keeps (tokenizer, chat template ...: :mod:`symdsl.models.companions`).
Tensors are written in the input's dtype (``dtype="auto"``) or cast to ``float32``, ``bfloat16``
or ``float16``; computation always ran in float32 or better.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import torch

from .._version import __version__
from ..errors import UsageError
from .card import write_card
from .companions import copy_companions
from .origin import Origin, origin_of, storage_dtype
from .output import hide_records, staged_output
from .shards import ShardLayout, plan_shards, read_layout, write_shards

MODEL_RECORD = "symdsl_model.json"
PROVENANCE = "symdsl.json"
OUTPUT_DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def output_dtype(name: str, origin: Origin | None = None) -> torch.dtype | None:
    """The dtype an output is written in: ``auto`` is the layout input's (None: as the model is).

    >>> output_dtype("bfloat16"), output_dtype("auto", Origin(dtypes=(torch.float16,)))
    (torch.bfloat16, torch.float16)
    >>> output_dtype("int8")
    Traceback (most recent call last):
    ...
    symdsl.errors.UsageError: dtype 'int8' is not an output dtype; choose one of auto, float32, bfloat16, float16
    """
    if name not in OUTPUT_DTYPES:
        raise UsageError(f"dtype '{name}' is not an output dtype; choose one of {', '.join(OUTPUT_DTYPES)}")
    return OUTPUT_DTYPES[name] if name != "auto" else (origin.dtype if origin is not None else None)


def _cast(state: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """Floating tensors in ``dtype`` (integer buffers such as position ids keep theirs)."""
    if dtype is None:
        return state
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


def is_transformers_model(model: torch.nn.Module) -> bool:
    return type(model).__module__.startswith("transformers.") and hasattr(model, "save_pretrained")


def write_model(model: torch.nn.Module, folder: Path, dtype: torch.dtype | None = None,
                layout: ShardLayout | None = None) -> list[str]:
    """Write ``model``'s checkpoint files into an existing ``folder`` (no provenance, not atomic).

    ``dtype``: cast the written floating tensors (the model itself is left as it is).
    ``layout``: a sharded input's layout to keep (:mod:`symdsl.models.shards`; transformers
    models). Returns notes on where the output could not keep it.
    """
    if is_transformers_model(model) and layout is not None:
        state = model.state_dict()
        plan, notes = plan_shards(state, layout)
        if plan is not None:
            write_shards(state, layout, plan, folder, dtype)
            _write_configs(model, folder, dtype or layout.dtype or storage_dtype(model))
            return notes
        write_model(model, folder, dtype)        # the documented fallback: save_pretrained's own layout
        return notes
    if dtype == storage_dtype(model) and all(p.dtype == dtype for p in model.parameters() if p.is_floating_point()):
        dtype = None
    if is_transformers_model(model):
        if dtype is None:
            model.save_pretrained(folder)
            return []
        model.save_pretrained(folder, state_dict=_cast(model.state_dict(), dtype))
        before = model.config.dtype
        model.config.dtype = str(dtype).removeprefix("torch.")    # what the tensors are, for dtype="auto" loaders
        try:
            model.config.save_pretrained(folder)
        finally:
            model.config.dtype = before
        return []
    from safetensors.torch import save_file

    check_savable(model)
    state = _cast({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, dtype)
    save_file(_unshared(state), str(folder / "model.safetensors"))
    record = _model_record(model)
    (folder / MODEL_RECORD).write_text(json.dumps(record, indent=2, default=str) + "\n")
    return []


def _write_configs(model: torch.nn.Module, folder: Path, dtype: torch.dtype | None) -> None:
    """``config.json`` (saying the tensors' ``dtype``) and, for a generative model, ``generation_config.json``,
    as ``save_pretrained`` writes them beside the weights."""
    before = model.config.dtype
    if dtype is not None:
        model.config.dtype = str(dtype).removeprefix("torch.")
    try:
        model.config.save_pretrained(folder)
    finally:
        model.config.dtype = before
    generation = getattr(model, "generation_config", None)
    if generation is not None and hasattr(model, "can_generate") and model.can_generate():
        generation.save_pretrained(folder)


def check_savable(model: torch.nn.Module) -> None:
    """Refuse, before any work, a model symdsl could not write back as a loadable folder.

    A transformers model saves itself; a timm model records its name and arguments; any other
    module needs its constructor arguments (``model.symdsl_config = {...}``) or the
    ``module:factory`` it was loaded from (``symdsl_factory``, set by :func:`load_model`).

    >>> check_savable(torch.nn.Linear(2, 2))
    Traceback (most recent call last):
    ...
    symdsl.errors.UsageError: cannot save a Linear: symdsl does not know how to rebuild it; load it as module:factory (the factory is recorded), or set model.symdsl_config = {...} (the keyword arguments of Linear(...))
    """
    if is_transformers_model(model) or _model_record(model) is not None:
        return
    name = type(model).__name__
    raise UsageError(f"cannot save a {name}: symdsl does not know how to rebuild it; load it as module:factory (the "
                     f"factory is recorded), or set model.symdsl_config = {{...}} (the keyword arguments of {name}(...))")


def _model_record(model: torch.nn.Module) -> dict[str, Any] | None:
    """``symdsl_model.json``'s content: how to rebuild ``model`` (None: unknown)."""
    config = getattr(model, "symdsl_config", None)
    timm_name = getattr(model, "symdsl_timm", None)
    factory = getattr(model, "symdsl_factory", None)
    if config is not None:
        return {"class": f"{type(model).__module__}:{type(model).__qualname__}", "config": config}
    if timm_name is not None:
        return {"timm": timm_name["name"], "config": timm_name["kwargs"]}
    if isinstance(factory, str):
        # rebuilt by calling the factory the user named: loading it back needs --trust-code
        return {"factory": factory, "config": {}}
    return None


def write_provenance(folder: Path, provenance: dict[str, Any]) -> None:
    """Write ``symdsl.json`` (the version and how the folder was made) into ``folder``."""
    (folder / PROVENANCE).write_text(json.dumps({"symdsl": __version__, **provenance}, indent=2, default=str) + "\n")


def library_name(model: torch.nn.Module) -> str | None:
    """The library a model card names (``library_name``): transformers or timm, else None."""
    if is_transformers_model(model):
        return "transformers"
    return "timm" if getattr(model, "symdsl_timm", None) else None


def write_extras(stage: Path, kind: str, model: torch.nn.Module, record: dict[str, Any], origin: Origin,
                 dtype: torch.dtype | None) -> dict[str, Any]:
    """Copy the layout input's companion files into ``stage`` and write the model card.

    Returns what ``symdsl.json`` adds about them (``dtype``, ``companions``); the caller writes
    ``symdsl.json`` after this, as the last file.
    """
    copied = copy_companions(origin.companion_folder, stage) if origin.companion_folder else []
    written = str(dtype or storage_dtype(model) or "").removeprefix("torch.") or None
    extra = {"dtype": written, "companions": copied, "base_models": origin.base_models}
    write_card(stage, kind, {**record, **extra}, origin, library_name=library_name(model), dtype=written,
               companions=copied)
    return extra


def save_model(model: torch.nn.Module, folder: str | Path, provenance: dict[str, Any] | None = None, *,
               overwrite: bool = False, kind: str = "train", origin: Origin | None = None,
               dtype: str = "auto") -> Path:
    """Write ``model`` to ``folder`` as a standard checkpoint plus ``symdsl.json``, atomically.

    An existing non-empty ``folder`` is refused unless ``overwrite``; the files are written
    beside it and moved into place at the end (:func:`symdsl.models.output.staged_output`), so
    an interrupted save leaves no folder that loads as a model. With a ``provenance`` the folder
    also gets a model card (``README.md``) and, when ``origin`` names a layout input with a
    folder, that input's tokenizer and other companion files. ``kind``: ``train``, ``align`` or
    ``merge`` (the card's wording); ``dtype``: ``auto`` (the layout input's, else the model's),
    ``float32``, ``bfloat16`` or ``float16``.

    >>> import tempfile, pathlib, torch
    >>> net = torch.nn.Linear(2, 3); net.symdsl_config = {"in_features": 2, "out_features": 3}
    >>> out = save_model(net, pathlib.Path(tempfile.mkdtemp()) / "net", {"command": "example"})
    >>> sorted(p.name for p in out.iterdir())
    ['README.md', 'model.safetensors', 'symdsl.json', 'symdsl_model.json']
    """
    inputs = origin.sources if origin is not None else []      # a given origin's folders are never written into
    origin = origin if origin is not None else origin_of([model])
    cast = output_dtype(dtype, origin)
    with staged_output(folder, overwrite=overwrite, inputs=inputs) as stage:
        notes = write_model(model, stage, cast, read_layout(origin.companion_folder))
        hide_records(stage)
        if provenance is not None:
            extra = write_extras(stage, kind, model, provenance, origin, cast)
            if notes:
                extra["notes"] = [*provenance.get("notes", []), *notes]
            write_provenance(stage, {**provenance, **extra})
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
        elif "factory" in record:      # a module:factory model: the factory is code, named in data
            build = record_class(record["factory"], f"{where}: factory", trust_code=trust_code, modules=record_modules)
            model = build(**config)
            if not isinstance(model, torch.nn.Module):
                raise UsageError(f"{where}: factory {record['factory']} returned {type(model).__name__}, not a model")
            model.symdsl_factory = record["factory"]
        else:
            cls = record_class(record.get("class"), f"{where}: class", trust_code=trust_code, modules=record_modules)
            model = cls(**config)
    except (TypeError, ValueError, RuntimeError, AssertionError) as exc:
        raise UsageError(f"{where}: config does not build the model: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None
    load_complete(model, read_state(folder / "model.safetensors"), str(folder / "model.safetensors"))
    if "timm" not in record and "factory" not in record:
        model.symdsl_config = config
    return model.eval()
