"""Matching: find the symmetry transform that aligns one model to another."""
from .base import MatchResult, Matcher

__all__ = ["MatchResult", "Matcher"]
