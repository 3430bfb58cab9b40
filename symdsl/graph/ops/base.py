"""How a rule is marked for its op names and collected into a table (the submodules' shared base)."""
from __future__ import annotations

from ..walker import Rule


def op_rule(*ops: str):
    """Mark a function as the rule for these canonical op names (collected by :func:`rules_in`).

    >>> @op_rule("my_activation")
    ... def my_activation(call):
    ...     x = call.tensor(0)
    ...     for axis in x:
    ...         call.nonlinear(axis)          # coordinatewise: only coordinate moves commute
    ...     return x
    >>> sorted(rules_in(my_activation))
    ['my_activation']
    """
    def wrap(fn: Rule) -> Rule:
        fn.symdsl_ops = tuple(ops)
        return fn
    return wrap


def rules_in(*sources) -> dict[str, Rule]:
    """``{op: rule}`` for every function marked with :func:`op_rule` in these modules (or the
    marked functions themselves). Two rules for one op name is an error.

    >>> from symdsl.graph.ops import elementwise
    >>> rules = rules_in(elementwise)
    >>> rules["add"] is rules["sub"], "linear" in rules
    (True, False)
    """
    found: dict[str, Rule] = {}
    for source in sources:
        values = vars(source).values() if hasattr(source, "__dict__") and not callable(source) else [source]
        for value in values:
            for op in getattr(value, "symdsl_ops", ()):
                if op in found and found[op] is not value:
                    raise ValueError(f"two rules for op '{op}': {found[op].__qualname__} and {value.__qualname__}")
                found[op] = value
    return found
