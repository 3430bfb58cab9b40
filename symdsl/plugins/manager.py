"""Load plugins into a :class:`~symdsl.registry.Registries` value: built-ins and third parties alike.

``load()`` makes a fresh pluggy manager each time it is called (nothing is kept in module
state), registers the built-in plugins, named here as import strings exactly as pytest names
its default plugins, then every plugin of the ``symdsl`` entry-point group, then any plugin
objects passed in, and collects what their hooks contribute. Blocking works by name for all
of them (``blocked=``, ``symdsl --block NAME`` or ``SYMDSL_BLOCK_PLUGINS=a,b``).

>>> reg = load()
>>> reg.matchers.origin("weight"), "symdsl-builtins" in reg.plugins
('symdsl-builtins', True)
>>> "weight" in load(blocked=["symdsl-builtins"]).matchers
False
"""
from __future__ import annotations

import importlib
import os
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any, Iterable, Mapping

import pluggy

from ..errors import UsageError, suggest
from ..registry import CATEGORIES, HINTS, Registries, Registry
from . import hookspecs

# name -> module: loaded like any plugin, blockable by the same name
BUILTIN_PLUGINS = {"symdsl-builtins": "symdsl_builtins.plugin"}
BLOCK_ENV = "SYMDSL_BLOCK_PLUGINS"

# hook -> (category, how its result lists contributions): "objects" hooks return objects with a
# ``name``; "mapping" hooks return {name: object}; "paths" hooks return folders
HOOKS = {
    "symdsl_group_kinds": ("group kind", "objects"),
    "symdsl_canonicalizers": ("canonicalizer", "objects"),
    "symdsl_matchers": ("matcher", "objects"),
    "symdsl_mergers": ("merger", "objects"),
    "symdsl_op_rules": ("op rule", "mapping"),
    "symdsl_capture_backends": ("capture backend", "mapping"),
    "symdsl_model_loaders": ("model loader", "objects"),
    "symdsl_spec_folders": ("spec folder", "paths"),
    "symdsl_datasets": ("dataset", "mapping"),
}


def blocked_from_env() -> list[str]:
    """Plugin names listed in ``SYMDSL_BLOCK_PLUGINS`` (comma-separated)."""
    return [n.strip() for n in os.environ.get(BLOCK_ENV, "").split(",") if n.strip()]


def _entry_point_names() -> list[str]:
    return [ep.name for ep in entry_points(group=hookspecs.PROJECT)]


def load(*, blocked: Iterable[str] = (), plugins: Mapping[str, Any] | None = None,
         entry_points: bool = True, env: bool = True) -> Registries:
    """Load the plugins and return what they contribute.

    ``blocked``: plugin names not to load (the built-ins are ``symdsl-builtins``); with ``env``,
    ``SYMDSL_BLOCK_PLUGINS`` adds more. Naming a plugin that does not exist is an error, so a
    typo never leaves a plugin loaded. ``plugins``: extra plugin objects (modules or objects
    with ``@hookimpl`` methods) by name, registered after the installed ones; this is how a
    script or test adds its own group kinds, loaders or rules with a name of its own.
    """
    plugins = dict(plugins or {})
    blocked = {*blocked, *(blocked_from_env() if env else [])}
    known = [*BUILTIN_PLUGINS, *(_entry_point_names() if entry_points else []), *plugins]
    for name in sorted(blocked):
        if name not in known:
            raise UsageError(f"cannot block plugin '{name}': no plugin has that name{suggest(name, known)} "
                             f"(plugins: {', '.join(known)})")
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for name in blocked:
        pm.set_blocked(name)
    for name, module in BUILTIN_PLUGINS.items():
        if name not in blocked:
            pm.register(importlib.import_module(module), name=name)
    if entry_points:
        pm.load_setuptools_entrypoints(hookspecs.PROJECT)
    for name, plugin in plugins.items():
        if name not in blocked:
            pm.register(plugin, name=name)
    return collect(pm, tuple(sorted(blocked)))


def collect(pm: pluggy.PluginManager, blocked: tuple[str, ...] = ()) -> Registries:
    """The :class:`Registries` of everything ``pm``'s plugins contribute, in registration order."""
    order = [name for name, plugin in pm.list_name_plugin() if plugin is not None]   # registration order
    rank = {name: i for i, name in enumerate(order)}
    found: dict[str, list[tuple[str, Any, str]]] = {category: [] for category in CATEGORIES}
    for hook_name, (category, shape) in HOOKS.items():
        impls = sorted(getattr(pm.hook, hook_name).get_hookimpls(), key=lambda i: rank.get(i.plugin_name, 0))
        for impl in impls:
            result = impl.function()
            found[category] += _entries(result, shape, category, impl.plugin_name)
    found["op rule"] = _overriding_builtins(found["op rule"])
    values = {}
    for category, attribute in CATEGORIES.items():
        try:
            values[attribute] = Registry(category, found[category], hint=HINTS.get(category, ""))
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    return Registries(**values, plugins=tuple(order), blocked=blocked)


def _overriding_builtins(entries: list[tuple[str, Any, str]]) -> list[tuple[str, Any, str]]:
    """Op rules only: a plugin's rule replaces the built-in rule for the same op (so a plugin can
    correct or extend what symdsl knows); two plugins' rules for one op still clash."""
    theirs = {name for name, _, origin in entries if origin not in BUILTIN_PLUGINS}
    return [e for e in entries if not (e[2] in BUILTIN_PLUGINS and e[0] in theirs)]


def _entries(result: Any, shape: str, category: str, plugin: str) -> list[tuple[str, Any, str]]:
    if not result:
        return []
    if shape == "mapping":
        if not isinstance(result, Mapping):
            raise UsageError(f"plugin '{plugin}': its {category} hook must return a dict, got {type(result).__name__}")
        return [(str(name), obj, plugin) for name, obj in result.items()]
    if shape == "paths":
        return [(str(folder), folder, plugin) for folder in result]
    out = []
    for obj in result:
        name = getattr(obj, "name", None)
        if not name:
            raise UsageError(f"plugin '{plugin}' contributed a {category} without a name: {obj!r}")
        out.append((name, obj, plugin))
    return out


@lru_cache(maxsize=1)
def default_registries() -> Registries:
    """``load()`` once per process: what the public API uses when no ``registries`` is given.

    Call ``default_registries.cache_clear()`` after installing a plugin in a running process.
    """
    return load()
