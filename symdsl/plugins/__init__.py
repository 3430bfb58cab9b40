"""Plugins: pluggy hooks through which built-ins and third parties contribute group kinds,
canonicalizers, matchers, mergers, op rules, capture backends, model loaders, spec folders
and datasets (see docs/plugins.md).

:func:`load` turns the installed plugins into a :class:`symdsl.registry.Registries` value; the
public API and the command line call it, and pass that value down.
"""
from .hookspecs import hookimpl, hookspec
from .manager import BUILTIN_PLUGINS, blocked_from_env, default_registries, load

__all__ = ["BUILTIN_PLUGINS", "blocked_from_env", "default_registries", "hookimpl", "hookspec", "load"]
