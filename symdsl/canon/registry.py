"""Name -> canonicalizer. Built-ins come from the ``symdsl_builtins`` plugin package."""
from __future__ import annotations

from ..errors import suggest
from .base import Canonicalizer

CANONICALIZERS: dict[str, Canonicalizer] = {}
_builtins_loaded = False


def register_canonicalizer(canon: Canonicalizer) -> Canonicalizer:
    """Add a canonicalizer; a second one with the same name is an error."""
    if canon.name in CANONICALIZERS and type(CANONICALIZERS[canon.name]) is not type(canon):
        raise ValueError(f"canonicalizer '{canon.name}' is already registered by {type(CANONICALIZERS[canon.name]).__module__}")
    CANONICALIZERS[canon.name] = canon
    return canon


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        import symdsl_builtins.canonicalizers  # noqa: F401  (registers on import)


def get_canonicalizer(name: str) -> Canonicalizer:
    """Look up a canonicalizer by name; KeyError with a suggestion when unknown."""
    _load_builtins()
    if name not in CANONICALIZERS:
        raise KeyError(f"unknown canonicalizer '{name}'{suggest(name, CANONICALIZERS)}; "
                       f"known: {', '.join(sorted(CANONICALIZERS))}")
    return CANONICALIZERS[name]
