"""Matching: find the symmetry transform that aligns one model to another."""
from .base import MatchResult, Matcher
from .registry import MATCHERS, get_matcher

__all__ = ["MatchResult", "Matcher", "MATCHERS", "get_matcher"]
