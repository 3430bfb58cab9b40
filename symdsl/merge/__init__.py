"""Merging: combine aligned models into one standard checkpoint."""
from .base import Merger
from .registry import MERGERS, get_merger

__all__ = ["Merger", "MERGERS", "get_merger"]
