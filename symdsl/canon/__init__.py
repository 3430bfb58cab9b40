"""Canonicalizers: function-preserving rewrites that make a spec's symmetries exact."""
from .base import Canonicalizer, canonicalize, model_tensor

__all__ = ["Canonicalizer", "canonicalize", "model_tensor"]
