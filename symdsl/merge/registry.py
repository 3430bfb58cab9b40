"""Mergers by name, filled by plugins."""
from __future__ import annotations

from ..errors import UsageError, suggest
from ..plugins.lazy import LazyRegistry
from .base import Merger

MERGERS: dict[str, Merger] = LazyRegistry("merger")


def get_merger(name: str) -> Merger:
    if name not in MERGERS:
        raise UsageError(f"unknown merger '{name}'{suggest(name, MERGERS)}; known: {', '.join(sorted(MERGERS))}")
    return MERGERS[name]
