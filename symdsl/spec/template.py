"""Layer templates: ``${i}`` in names and values, expanded over ``repeat`` ranges."""
from __future__ import annotations

import itertools
import re
from typing import Any, Iterator, Mapping

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def variables(text: str) -> list[str]:
    """Template variables used in a string, in order of first use.

    >>> variables("h.${i}.mlp.${j}")
    ['i', 'j']
    """
    seen: list[str] = []
    for name in _VAR.findall(text):
        if name not in seen:
            seen.append(name)
    return seen


def substitute(text: str, env: Mapping[str, Any]) -> str:
    """Replace ``${v}`` by its value for every v in env; leave others untouched."""
    return _VAR.sub(lambda m: str(env[m.group(1)]) if m.group(1) in env else m.group(0), text)


def combos(names: list[str], ranges: Mapping[str, int]) -> Iterator[dict[str, int]]:
    """Every assignment of the named variables over their ranges (row-major)."""
    for values in itertools.product(*[range(ranges[n]) for n in names]):
        yield dict(zip(names, values))


def _scalar_vars(value: Any) -> list[str]:
    if isinstance(value, str):
        return variables(value)
    if isinstance(value, dict):
        return [v for item in value.values() if not isinstance(item, (list, dict)) for v in _scalar_vars(item)]
    return []


def substitute_all(value: Any, env: Mapping[str, Any]) -> Any:
    if isinstance(value, str):
        return substitute(value, env)
    if isinstance(value, list):
        return [substitute_all(v, env) for v in value]
    if isinstance(value, dict):
        return {substitute(k, env): substitute_all(v, env) for k, v in value.items()}
    return value


def expand_list(items: list, ranges: Mapping[str, int]) -> list:
    """Expand a list: a string item becomes one item per value of its variables;
    a mapping item (a canonicalizer step) becomes one item per value of the variables in
    its scalar fields, then its inner lists are expanded the same way; a list item (a tie
    group) becomes one list per value of all its variables.

    >>> expand_list(["a.${i}", {"norm": "n.${i}", "readers": ["r.${i}"]}], {"i": 2})
    ['a.0', 'a.1', {'norm': 'n.0', 'readers': ['r.0']}, {'norm': 'n.1', 'readers': ['r.1']}]
    """
    out: list = []
    for item in items:
        if isinstance(item, str):
            out.extend(substitute(item, env) for env in combos(variables(item), ranges))
        elif isinstance(item, list):
            names = list(dict.fromkeys(v for s in item if isinstance(s, str) for v in variables(s)))
            out.extend(substitute_all(item, env) for env in combos(names, ranges))
        elif isinstance(item, dict):
            names = list(dict.fromkeys(_scalar_vars(item)))
            for env in combos(names, ranges):
                fixed = substitute_all(item, env)
                out.append({k: expand_list(v, ranges) if isinstance(v, list) else
                            ({kk: expand_list(vv, ranges) if isinstance(vv, list) else vv for kk, vv in v.items()}
                             if isinstance(v, dict) else v)
                            for k, v in fixed.items()})
        else:
            out.append(item)
    return out
