"""Plugins: pluggy hooks through which built-ins and third parties contribute group kinds,
canonicalizers, matchers, mergers, op rules, capture backends, model loaders, spec folders
and datasets (see docs/plugins.md)."""
from .hookspecs import hookimpl, hookspec
from .manager import block, ensure_loaded, inventory, plugin_manager, reset

__all__ = ["hookimpl", "hookspec", "block", "ensure_loaded", "inventory", "plugin_manager", "reset"]
