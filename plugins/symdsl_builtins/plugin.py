"""symdsl's built-in plugin: registers the built-ins through the same hooks a third party uses."""
from __future__ import annotations

from pathlib import Path

from symdsl.plugins import hookimpl


@hookimpl
def symdsl_group_kinds():
    from symdsl.groups.registry import BUILTIN_KINDS

    return [kind() for kind in BUILTIN_KINDS]


@hookimpl
def symdsl_canonicalizers():
    from .canonicalizers import BUILTIN_CANONICALIZERS

    return [canon() for canon in BUILTIN_CANONICALIZERS]


@hookimpl
def symdsl_matchers():
    from .matchers import BUILTIN_MATCHERS

    return [matcher() for matcher in BUILTIN_MATCHERS]


@hookimpl
def symdsl_mergers():
    from .mergers import BUILTIN_MERGERS

    return [merger() for merger in BUILTIN_MERGERS]


@hookimpl
def symdsl_op_rules():
    from symdsl.graph.ops import builtin_op_rules

    return builtin_op_rules()


@hookimpl
def symdsl_capture_backends():
    from symdsl.graph.capture_export import capture_export
    from symdsl.graph.capture_fx import capture_fx

    return {"export": capture_export, "fx": capture_fx}


@hookimpl
def symdsl_spec_folders():
    import symdsl_specs

    return [Path(symdsl_specs.__file__).parent]
