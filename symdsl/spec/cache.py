"""Resolve once per (spec, model configuration) and reuse the result."""
from __future__ import annotations

import json
from typing import Any

import torch

from .binding import ResolvedSpec
from .load import Spec
from ..registry import Registries
from .config import model_config
from .coverage import detect_ties
from .resolve import resolve

_CACHE: dict[tuple, ResolvedSpec] = {}
_MAX_ENTRIES = 64


def _fingerprint(spec: Spec, model: torch.nn.Module, registries: Registries) -> tuple:
    config: Any = model_config(model)
    state = model.state_dict(keep_vars=True)
    shapes = tuple((name, tuple(t.shape)) for name, t in state.items())
    ties = tuple(tuple(group) for group in detect_ties(state))
    # id(spec): another Spec object with the same content may sit at other lines of another file
    return (id(spec), id(registries), spec.document.model_dump_json(), json.dumps(config, sort_keys=True, default=str), shapes, ties)


def resolve_cached(spec: Spec, model: torch.nn.Module, registries: Registries) -> ResolvedSpec:
    """Like :func:`symdsl.spec.resolve`, but reuses the result for models of the same configuration.

    Two models with the same spec, config and parameter shapes (two seeds of one
    architecture) share one ResolvedSpec object.
    """
    key = _fingerprint(spec, model, registries)
    resolved = _CACHE.get(key)
    if resolved is None:
        if len(_CACHE) >= _MAX_ENTRIES:
            _CACHE.pop(next(iter(_CACHE)))
        resolved = _CACHE[key] = resolve(spec, model, registries=registries)
    return resolved
