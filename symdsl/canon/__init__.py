"""Canonicalizers: function-preserving rewrites that make a spec's symmetries exact."""
from .base import Canonicalizer, canonicalize, model_tensor
from .registry import CANONICALIZERS, get_canonicalizer, register_canonicalizer

__all__ = ["Canonicalizer", "canonicalize", "model_tensor", "CANONICALIZERS", "get_canonicalizer",
           "register_canonicalizer"]
