"""The plugin manager: built-ins and third-party plugins, loaded once, each blockable by name.

Built-ins live in the ``symdsl_builtins`` package and are registered exactly like a
third-party plugin (same hooks). Third parties register through the ``symdsl`` entry-point
group. Block plugins with ``SYMDSL_BLOCK_PLUGINS=name1,name2`` or ``symdsl --block NAME``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import pluggy

from . import hookspecs

BUILTIN_NAME = "symdsl-builtins"

_state = {"pm": None, "loading": False, "blocked": set()}


@dataclass
class Contribution:
    """One thing a plugin registered: its category, name, object and the plugin it came from."""

    category: str
    name: str
    obj: object
    plugin: str
    description: str = ""


@dataclass
class Inventory:
    contributions: list[Contribution] = field(default_factory=list)
    plugins: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)


_inventory = Inventory()


def block(*names: str) -> None:
    """Block plugins by name for this process (takes effect at the next load)."""
    _state["blocked"].update(n for n in names if n)
    reset()


def blocked_names() -> set[str]:
    env = {n.strip() for n in os.environ.get("SYMDSL_BLOCK_PLUGINS", "").split(",") if n.strip()}
    return env | set(_state["blocked"])


def reset() -> None:
    """Forget the loaded plugins (their registrations too); the next registry read reloads them."""
    from ..canon.registry import CANONICALIZERS
    from ..graph.capture import CAPTURE_BACKENDS
    from ..graph.rules import RULES
    from ..groups.registry import GROUP_KINDS
    from ..match.registry import MATCHERS
    from ..merge.registry import MERGERS

    for registry in (GROUP_KINDS, CANONICALIZERS, RULES, CAPTURE_BACKENDS, MATCHERS, MERGERS):
        registry.clear_plugins()
    _state["pm"] = None
    _inventory.contributions.clear()


def plugin_manager() -> pluggy.PluginManager:
    """The loaded plugin manager (loading the plugins on first use)."""
    ensure_loaded()
    return _state["pm"]


def ensure_loaded() -> None:
    """Load built-in and entry-point plugins once and register what they contribute."""
    if _state["pm"] is not None or _state["loading"]:
        return
    _state["loading"] = True
    try:
        pm = pluggy.PluginManager(hookspecs.PROJECT)
        pm.add_hookspecs(hookspecs)
        blocked = blocked_names()
        for name in blocked:
            pm.set_blocked(name)
        if BUILTIN_NAME not in blocked:
            import symdsl_builtins.plugin as builtin

            pm.register(builtin, name=BUILTIN_NAME)
        pm.load_setuptools_entrypoints(hookspecs.PROJECT)
        _register_all(pm)
        _inventory.plugins = [pm.get_name(p) for p in pm.get_plugins()]
        _inventory.blocked = sorted(blocked)
        _state["pm"] = pm
    finally:
        _state["loading"] = False


def _calls(pm, hook_name):
    """(plugin name, result) for every implementation of a hook."""
    hook = getattr(pm.hook, hook_name)
    for impl in hook.get_hookimpls():
        yield impl.plugin_name, impl.function()


def _describe(obj) -> str:
    text = getattr(obj, "description", None) or (obj.__doc__ or "")
    return text.strip().splitlines()[0] if text and text.strip() else ""


def _register_all(pm) -> None:
    from ..canon.registry import CANONICALIZERS
    from ..graph.capture import CAPTURE_BACKENDS
    from ..graph.rules import RULES
    from ..groups.registry import GROUP_KINDS
    from ..match.registry import MATCHERS
    from ..merge.registry import MERGERS
    from ..spec.registry import add_spec_folder

    named = {"symdsl_group_kinds": ("group", GROUP_KINDS), "symdsl_canonicalizers": ("canonicalizer", CANONICALIZERS),
             "symdsl_matchers": ("matcher", MATCHERS), "symdsl_mergers": ("merger", MERGERS)}
    for hook_name, (category, registry) in named.items():
        for plugin, items in _calls(pm, hook_name):
            for obj in items or []:
                registry.add(obj.name, obj, plugin)
                _inventory.contributions.append(Contribution(category, obj.name, obj, plugin, _describe(obj)))
    mapped = {"symdsl_op_rules": ("op rule", RULES), "symdsl_capture_backends": ("capture backend", CAPTURE_BACKENDS)}
    for hook_name, (category, registry) in mapped.items():
        for plugin, items in _calls(pm, hook_name):
            for name, fn in (items or {}).items():
                registry.add(name, fn, plugin)
                _inventory.contributions.append(Contribution(category, name, fn, plugin, _describe(fn)))
    for plugin, folders in _calls(pm, "symdsl_spec_folders"):
        for folder in folders or []:
            add_spec_folder(folder, origin=plugin)
            _inventory.contributions.append(Contribution("spec folder", str(folder), folder, plugin))
    for plugin, loaders in _calls(pm, "symdsl_model_loaders"):
        for loader in loaders or []:
            _inventory.contributions.append(Contribution("model loader", loader.name, loader, plugin, _describe(loader)))
    from ..data.registry import DATASETS, register_dataset

    for plugin, datasets in _calls(pm, "symdsl_datasets"):
        for name, factory in (datasets or {}).items():
            if DATASETS.get(name) is not factory:
                register_dataset(name, factory)
            _inventory.contributions.append(Contribution("dataset", name, factory, plugin, _describe(factory)))


def inventory() -> Inventory:
    """Everything the loaded plugins contributed, with origins (for ``symdsl plugins``)."""
    ensure_loaded()
    return _inventory
