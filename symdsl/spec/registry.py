"""Find specs in the spec folders plugins contribute (the shipped ones come from the built-in
plugin), and match a model to its spec."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import SpecError, UsageError, suggest
from ..registry import Registries
from .cache import resolve_cached
from .config import config_mismatches, model_config
from .load import Spec, load_spec


@dataclass
class SpecEntry:
    name: str
    file: Path
    origin: str
    spec: Spec


def list_specs(registries: Registries) -> list[SpecEntry]:
    """Every spec in ``registries``' spec folders, sorted by name; a name defined twice is an error."""
    entries: dict[str, SpecEntry] = {}
    for folder, origin in registries.folders():
        for file in sorted(folder.glob("*.yaml")):
            spec = load_spec(file, trust_code=True)    # an installed plugin's spec: its code runs anyway
            if spec.name in entries:
                raise UsageError(f"spec name '{spec.name}' is defined twice: {entries[spec.name].file} and {file}")
            entries[spec.name] = SpecEntry(spec.name, file, origin, spec)
    return sorted(entries.values(), key=lambda e: e.name)


def find_spec(name_or_path: str | Path, registries: Registries, *, trust_code: bool = False) -> Spec:
    """A spec by file path or by name (looked up in ``registries``' spec folders).

    Specs of registered folders may build their example with a factory; a spec file may only
    with ``trust_code`` (see :class:`symdsl.spec.load.Spec`).

    >>> from symdsl.plugins import load
    >>> find_spec("hf-gpt2", load()).name
    'hf-gpt2'
    """
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise UsageError(f"spec file '{path}' does not exist")
        return load_spec(path, trust_code=trust_code)
    entries = {e.name: e for e in list_specs(registries)}
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
    patterns = list(getattr(spec.document.matches, library)) + list(spec.document.matches.torch)
    names = [type(model).__name__]
    pretrained = getattr(model, "pretrained_cfg", None) or {}
    if library == "timm" and pretrained.get("architecture"):
        names.append(pretrained["architecture"])
    if not any(fnmatch.fnmatchcase(n, p) for n in names for p in patterns):
        return False
    return not config_mismatches(spec, model_config(model))



def match_spec(model: torch.nn.Module, registries: Registries) -> Spec:
    """The one spec that matches ``model`` and binds to it; a clear error when none or several do.

    ``matches`` names classes, but one class can come in architectures a spec cannot describe
    (timm's VisionTransformer without a class token, or with register tokens): a spec is
    chosen only when it also binds to the model (every tensor bound or invariant, every size
    right), so an architecture no spec describes is refused here, with the reason, instead of
    failing later inside the check.
    """
    found = [e for e in list_specs(registries) if spec_matches(e.spec, model)]
    if not found:
        raise UsageError(f"no spec matches {type(model).__module__}.{type(model).__name__}; give one by name or .yaml "
                         "file (spec=...; command line: --spec, or SPEC for check), or draft one from the model's "
                         "graph with symdsl.infer(model) (command line: symdsl infer --model MODEL -o SPEC.yaml) "
                         "and check it before use")
    bound, refused = [], []
    for entry in found:
        try:
            resolve_cached(entry.spec, model, registries)
            bound.append(entry)
        except (SpecError, UsageError) as exc:
            refused.append((entry, exc))
    if len(bound) > 1:
        raise UsageError(f"several specs match {type(model).__name__}: {[e.name for e in bound]}; choose one by name "
                         "(spec=...; command line: --spec, or SPEC for check)")
    if bound:
        return bound[0].spec
    reasons = "; ".join(f"{e.name}: {_first_problem(exc)}" for e, exc in refused)
    raise UsageError(f"{type(model).__name__}: {_joined([e.name for e, _ in refused])} "
                     f"{'matches' if len(refused) == 1 else 'match'} its class but cannot bind this architecture "
                     f"({reasons}); no known spec describes it: draft one with `symdsl infer --model MODEL -o SPEC.yaml` "
                     "(python: symdsl.infer(model)), or give a spec (spec=...; command line: --spec, or SPEC for check)")


def _joined(names: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``: the refused specs, readable however many there are."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _first_problem(exc: Exception) -> str:
    """The first binding problem, without its file position (the message names the spec)."""
    if isinstance(exc, SpecError) and exc.problems:
        first = exc.problems[0]
        more = len(exc.problems) - 1
        key = ".".join(str(p) for p in first.path)
        return (f"{key}: " if key else "") + first.message + (f" (and {more} more)" if more else "")
    return str(exc).splitlines()[0]
