"""The op-rule table: one rule per aten op, shared by the static check and spec inference.

A rule is ``rule(call) -> value``. It reads its operands through ``call`` (an
:class:`~symdsl.graph.walker.OpCall`) and states, once, what the op does to their axes:
``call.same(a, b)`` (one space), ``call.contract(a, b)`` (primal summed against dual),
``call.nonlinear(axis)``, ``call.shift(axis)`` (a constant is added), ``call.summed(axis)``,
``call.fixed(axis, why)``, ``call.normalize(...)``, the reshape algebra of
:mod:`symdsl.graph.shapes`. The checker turns those statements into site-type checks, inference
into unions and flags. The rule returns the output's value: a tuple of axes, a list (several
outputs), a :class:`~symdsl.graph.shapes.Stacked` value or None.

The table is a value: :func:`builtin_op_rules` returns a fresh ``{op name: rule}`` dict that
the caller may extend and pass to the analyses (``op_rules=``); the built-in plugin's
``symdsl_op_rules`` hook returns it, and another plugin's hook adds (or replaces) rules.

>>> rules = builtin_op_rules()
>>> rules["gelu"] is rules["relu"], sorted(rules)[:3]
(True, ['_assert_tensor_metadata', '_log_softmax', '_softmax'])
"""
from __future__ import annotations

from ..walker import OpRules, Rule

__all__ = ["OpRules", "Rule", "builtin_op_rules", "op_rule", "rules_in"]


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


def builtin_op_rules() -> dict[str, Rule]:
    """A fresh dict of symdsl's built-in rules (the caller may add to it)."""
    from . import attention, contract, elementwise, layout, norm, select

    return rules_in(attention, contract, elementwise, layout, norm, select)
