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
from . import attention, contract, elementwise, factory, layout, norm, select
from . import moe
from .base import op_rule, rules_in

__all__ = ["OpRules", "Rule", "builtin_op_rules", "op_rule", "rules_in"]


def builtin_op_rules() -> dict[str, Rule]:
    """A fresh dict of symdsl's built-in rules (the caller may add to it)."""
    return rules_in(attention, contract, elementwise, factory, layout, norm, select, moe)
