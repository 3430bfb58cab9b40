"""Name -> canonicalizer, filled by plugins (built-ins come from the ``symdsl_builtins`` plugin)."""
from __future__ import annotations

from ..errors import suggest
from ..plugins.lazy import LazyRegistry
from .base import Canonicalizer

CANONICALIZERS: dict[str, Canonicalizer] = LazyRegistry("canonicalizer")


def register_canonicalizer(canon: Canonicalizer) -> Canonicalizer:
    """Add a canonicalizer; a second one with the same name is an error."""
    if canon.name in CANONICALIZERS:
        raise ValueError(f"canonicalizer '{canon.name}' is already registered by {type(CANONICALIZERS[canon.name]).__module__}")
    CANONICALIZERS[canon.name] = canon
    return canon


def get_canonicalizer(name: str) -> Canonicalizer:
    """Look up a canonicalizer by name; KeyError with a suggestion when unknown."""
    if name not in CANONICALIZERS:
        raise KeyError(f"unknown canonicalizer '{name}'{suggest(name, CANONICALIZERS)}; "
                       f"known: {', '.join(sorted(CANONICALIZERS))}")
    return CANONICALIZERS[name]
