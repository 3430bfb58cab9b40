"""Canonicalizers: function-preserving rewrites that make a spec's symmetries exact."""
from .base import Canonicalizer, RestoreContext, canonicalize, kept_for_restore, model_tensor, restore, restore_reads

__all__ = ["Canonicalizer", "RestoreContext", "canonicalize", "kept_for_restore", "model_tensor", "restore",
           "restore_reads"]
