"""symdsl's built-in plugin: registers the built-ins through the same hooks a third party uses.

The plugin manager loads it by name (``symdsl-builtins``), exactly as it loads an entry-point
plugin, so it can be blocked like any other.
"""
from __future__ import annotations

from pathlib import Path

import symdsl_specs
from symdsl.data import BUILTIN_DATASETS
from symdsl.graph.capture import BUILTIN_BACKENDS
from symdsl.graph.ops import builtin_op_rules
from symdsl.groups import BUILTIN_GROUP_KINDS
from symdsl.plugins.hookspecs import hookimpl

from .canonicalizers import BUILTIN_CANONICALIZERS
from .matchers import BUILTIN_MATCHERS
from .mergers import BUILTIN_MERGERS


@hookimpl
def symdsl_group_kinds():
    return list(BUILTIN_GROUP_KINDS.values())


@hookimpl
def symdsl_canonicalizers():
    return [canon() for canon in BUILTIN_CANONICALIZERS]


@hookimpl
def symdsl_matchers():
    return [matcher() for matcher in BUILTIN_MATCHERS]


@hookimpl
def symdsl_mergers():
    return [merger() for merger in BUILTIN_MERGERS]


@hookimpl
def symdsl_op_rules():
    return builtin_op_rules()


@hookimpl
def symdsl_capture_backends():
    return dict(BUILTIN_BACKENDS)


@hookimpl
def symdsl_spec_folders():
    return [Path(symdsl_specs.__file__).parent]


@hookimpl
def symdsl_datasets():
    return dict(BUILTIN_DATASETS)
