"""The hooks a symdsl plugin can implement. Every hook name starts with ``symdsl_``.

A plugin is a module or object with functions decorated by :data:`hookimpl`, registered
through the ``symdsl`` entry-point group of its package::

    [project.entry-points.symdsl]
    my-plugin = "my_package.symdsl_plugin"

Every hook returns the things it contributes (an empty list when it has none); names must
be unique across all plugins, and a duplicate is an error that names both plugins.
"""
from __future__ import annotations

import pluggy

PROJECT = "symdsl"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def symdsl_group_kinds() -> list:
    """Group kinds (instances of :class:`symdsl.groups.GroupKind`): identity, random, dual,
    compose, apply, project for one family of group elements, used as ``group:`` in specs."""


@hookspec
def symdsl_canonicalizers() -> list:
    """Canonicalizers (instances of :class:`symdsl.canon.Canonicalizer`): function-preserving
    rewrites used as ``canonicalize:`` steps in specs."""


@hookspec
def symdsl_matchers() -> list:
    """Matchers (instances of :class:`symdsl.match.Matcher`): find the transform that aligns
    model B to model A; selected with ``symdsl align --matcher NAME``."""


@hookspec
def symdsl_mergers() -> list:
    """Mergers (instances of :class:`symdsl.merge.Merger`): combine aligned state dicts."""


@hookspec
def symdsl_op_rules() -> dict:
    """Static-check rules: a dict ``{canonical op name: rule(ctx) -> type}`` (see docs/checking.md)."""


@hookspec
def symdsl_capture_backends() -> dict:
    """Graph capture backends: ``{name: fn(model, inputs) -> CapturedGraph}``."""


@hookspec
def symdsl_model_loaders() -> list:
    """Model loaders (instances of :class:`symdsl.models.ModelLoader`): turn a REF string into a model."""


@hookspec
def symdsl_spec_folders() -> list:
    """Folders (paths) holding ``*.yaml`` specs to add to the registry."""


@hookspec
def symdsl_datasets() -> dict:
    """Evaluation datasets: ``{name: factory(**options) -> Dataset}``, used with ``--data NAME``."""
