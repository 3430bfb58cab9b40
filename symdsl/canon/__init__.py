"""Canonicalizers: function-preserving rewrites that make a spec's symmetries exact."""
from .base import Canonicalizer, RestoreContext, canonicalize, model_tensor, restore

__all__ = ["Canonicalizer", "RestoreContext", "canonicalize", "model_tensor", "restore"]
