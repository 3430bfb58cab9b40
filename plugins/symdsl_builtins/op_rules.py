"""The built-in op-rule table, as the ``symdsl_op_rules`` hook contributes it."""
from __future__ import annotations

from symdsl.graph.rules import attention, elementwise, linear, norm, rules_in, shape


def builtin_op_rules() -> dict:
    """``{canonical op name: rule}`` for every op symdsl itself knows."""
    return rules_in(attention, elementwise, linear, norm, shape)

