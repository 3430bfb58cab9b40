"""Merging: combine the state dicts of aligned models."""
from .base import Merger

__all__ = ["Merger"]
