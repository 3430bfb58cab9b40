"""Expanding a spec's template entries (``h.${i}.mlp``) over the 'repeat' ranges, with checks.

An entry whose template is wrong (an undeclared variable, one used in a value but not in its
key) is reported once and dropped; :mod:`.coverage` remembers what it would have matched so
that the dropped entry causes no follow-up errors.
"""
from __future__ import annotations

from typing import Any, Mapping

from ..errors import suggest
from .context import ResolveContext
from .template import combos, expand_list, substitute, variables


def _template_strings(value: Any):
    """Every string inside a value (keys included), for template checks."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _template_strings(item)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _template_strings(key)
            yield from _template_strings(item)
    elif hasattr(value, "model_dump"):
        yield from _template_strings(value.model_dump(exclude={"doc"}))


def template_vars(value: Any) -> list[str]:
    """The template variables anywhere in a value, keys included, in order of first use.

    >>> template_vars({"h.${i}.w": ["${j}", "x"], "b": "${i}"})
    ['i', 'j']
    """
    return list(dict.fromkeys(v for text in _template_strings(value) for v in variables(text)))


def check_template(context: ResolveContext, value: Any, path: tuple, bound: Mapping[str, Any] | None = None,
                   key: str | None = None) -> bool:
    """True when every ``${v}`` in value is declared in 'repeat' (and, for a mapping entry's value,
    also appears in its key ``key``, whose variables are ``bound``); else report and return False."""
    ok = True
    for name in template_vars(value):
        if bound is not None and name in bound:
            continue
        if name == "prefix" and path[:1] != ("heads",):
            context.problem(path, "'${prefix}' is only for head entries; backbone names get the prefix "
                            "automatically", "write the name without the prefix")
        elif name not in context.ranges:
            context.problem(path, f"template variable '${{{name}}}' is not declared in 'repeat'"
                            f"{suggest(name, context.ranges)}", "declare it, e.g. repeat: {i: L}")
        elif key is not None:
            context.problem(path, f"template variable '${{{name}}}' is used in the value but not in the key "
                            f"'{key}', so it has no value here", f"add '${{{name}}}' to the key or drop it from the value")
        else:
            continue
        ok = False
    return ok


def expand_keys(context: ResolveContext, mapping: Mapping[str, Any], section: tuple,
                fixed: Mapping[str, str] | None = None) -> list[tuple[str, Any, tuple, dict]]:
    """(expanded key, value, origin path, env) for each template key of a mapping.

    ``fixed`` holds string-valued variables (``prefix`` in heads) substituted as they are.
    """
    fixed = dict(fixed or {})
    out = []
    for key, value in mapping.items():
        origin = section + (key,)
        names = [n for n in variables(key) if n not in fixed]
        if not check_template(context, names and [key] or [], origin, bound=fixed) or \
                not check_template(context, value, origin, bound={**fixed, **dict.fromkeys(names)}, key=key):
            context.dropped.append((section, key, fixed))
            continue
        for combo in combos(names, context.ranges):
            env: dict[str, Any] = {**fixed, **combo}
            out.append((substitute(key, env), value, origin, env))
    return out


def expand_items(context: ResolveContext, items: list, section: tuple) -> list[tuple[Any, tuple]]:
    """(expanded item, origin path) for each entry of a list section (invariant names, tie groups)."""
    out: list[tuple[Any, tuple]] = []
    for index, item in enumerate(items):
        origin = section + (index,)
        if check_template(context, item, origin):
            out.extend((value, origin) for value in expand_list([item], context.ranges))
        elif isinstance(item, str):
            context.dropped.append((section, item, {}))
        else:
            context.ties_incomplete = True  # a tie group was skipped: the tie check would be unfounded
    return out
