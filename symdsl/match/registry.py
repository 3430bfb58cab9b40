"""Matchers by name, filled by plugins (weight and activation matching come from symdsl_builtins)."""
from __future__ import annotations

from ..errors import UsageError, suggest
from ..plugins.lazy import LazyRegistry
from .base import Matcher

MATCHERS: dict[str, Matcher] = LazyRegistry("matcher")


def get_matcher(name: str) -> Matcher:
    """The matcher called ``name``; a UsageError with a suggestion if there is none."""
    if name not in MATCHERS:
        raise UsageError(f"unknown matcher '{name}'{suggest(name, MATCHERS)}; known: {', '.join(sorted(MATCHERS))} "
                         "(`symdsl plugins` lists them)")
    return MATCHERS[name]
