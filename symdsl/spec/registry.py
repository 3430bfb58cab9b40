"""Find specs: shipped ones (package ``symdsl_specs``), extra folders, and matching a model to a spec."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UsageError, suggest
from .load import Spec, load_spec

_extra_folders: list[tuple[Path, str]] = []   # (folder, plugin that contributed it)


def add_spec_folder(folder: str | Path, origin: str = "user") -> None:
    """Make the ``*.yaml`` specs in ``folder`` visible to :func:`list_specs` (the spec-folder hook calls this)."""
    folder = Path(folder)
    if folder not in [f for f, _ in _extra_folders]:
        _extra_folders.append((folder, origin))


def spec_folders() -> list[tuple[Path, str]]:
    """(folder, origin) pairs searched for specs: those of the loaded plugins (shipped specs come from
    the built-in plugin), then folders added by hand."""
    from ..plugins.manager import ensure_loaded

    ensure_loaded()
    return list(_extra_folders)


@dataclass
class SpecEntry:
    name: str
    file: Path
    origin: str
    spec: Spec


def list_specs() -> list[SpecEntry]:
    """Every spec found, sorted by name; duplicate names across folders are an error."""
    entries: dict[str, SpecEntry] = {}
    for folder, origin in spec_folders():
        for file in sorted(folder.glob("*.yaml")):
            spec = load_spec(file)
            if spec.name in entries:
                raise UsageError(f"spec name '{spec.name}' is defined twice: {entries[spec.name].file} and {file}")
            entries[spec.name] = SpecEntry(spec.name, file, origin, spec)
    return sorted(entries.values(), key=lambda e: e.name)


def find_spec(name_or_path: str | Path) -> Spec:
    """A spec by file path or by name.

    >>> find_spec("hf-gpt2").name
    'hf-gpt2'
    """
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise UsageError(f"spec file '{path}' does not exist")
        return load_spec(path)
    entries = {e.name: e for e in list_specs()}
    if str(name_or_path) not in entries:
        raise UsageError(f"no spec named '{name_or_path}'{suggest(str(name_or_path), entries)}; "
                         f"known: {', '.join(entries) or 'none'} (or pass a .yaml path)")
    return entries[str(name_or_path)].spec


def _library(model: torch.nn.Module) -> str:
    module = type(model).__module__
    if module.startswith("transformers."):
        return "transformers"
    if module.startswith("timm."):
        return "timm"
    return "torch"


def spec_matches(spec: Spec, model: torch.nn.Module) -> bool:
    """Does ``spec.matches`` name this model's class (or timm model name)?"""
    library = _library(model)
    patterns = list(getattr(spec.model.matches, library)) + list(spec.model.matches.torch)
    names = [type(model).__name__]
    pretrained = getattr(model, "pretrained_cfg", None) or {}
    if library == "timm" and pretrained.get("architecture"):
        names.append(pretrained["architecture"])
    return any(fnmatch.fnmatchcase(n, p) for n in names for p in patterns)


def match_spec(model: torch.nn.Module) -> Spec:
    """The one spec that matches ``model``; a clear error when none or several do."""
    found = [e for e in list_specs() if spec_matches(e.spec, model)]
    if not found:
        raise UsageError(f"no spec matches {type(model).__module__}.{type(model).__name__}; pass the spec name or file as SPEC "
                         "(see docs/spec-language.md to write one)")
    if len(found) > 1:
        raise UsageError(f"several specs match {type(model).__name__}: {[e.name for e in found]}; pass the spec name as SPEC")
    return found[0].spec
