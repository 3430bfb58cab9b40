"""The bridge between the op-rule table and the plugin registry (the only graph module that does).

The rules themselves live in :mod:`symdsl.graph.ops` (one per op, shared by the static check
and inference); the analyses take the table as a value (``op_rules=``). When a caller passes
none, :func:`plugin_op_rules` supplies the table the plugins contributed through the
``symdsl_op_rules`` hook (symdsl's built-in plugin returns :func:`symdsl.graph.ops.builtin_op_rules`).

Today that table is :data:`RULES`, a registry that :mod:`symdsl.plugins.manager` fills; it is
kept here, with :func:`register_rule`, only for that plumbing.
"""
from __future__ import annotations

from ...errors import suggest
from ...plugins.lazy import LazyRegistry
from ..ops import op_rule as rule, rules_in
from ..typecheck import Violation
from ..walker import OpRules, Rule, Unsupported

class _OpRuleRegistry(LazyRegistry):
    """The plugin-contributed table: a third-party plugin's rule replaces a built-in one for the
    same op (the built-in plugin registers first); two third-party rules for one op clash."""

    def add(self, name, obj, origin="symdsl"):
        from ...plugins.manager import BUILTIN_NAME

        if dict.__contains__(self, name) and self.origins.get(name) == BUILTIN_NAME and origin != BUILTIN_NAME:
            dict.__delitem__(self, name)
        return super().add(name, obj, origin)


RULES: dict[str, Rule] = _OpRuleRegistry("op rule")   # filled by plugins (built-ins: symdsl_builtins)


# ----------------------------------------------------------------------------------------------
# REWIRE HERE: the one place that turns plugin contributions into an op-rule table. Everything
# else receives the table as a value (``op_rules=`` on propagate, static_check, walk, infer_spec,
# check_draft) and falls back to this function when given None.
def plugin_op_rules() -> OpRules:
    """The op-rule table contributed by the loaded plugins (reading it loads them).

    >>> from symdsl.graph.ops import builtin_op_rules
    >>> plugin_op_rules()["linear"] is builtin_op_rules()["linear"]      # the built-in plugin's rule
    True
    """
    return RULES
# ----------------------------------------------------------------------------------------------


def register_rule(op: str, fn: Rule, *, replace: bool = False) -> Rule:
    """Add ``fn`` as the rule for canonical op name ``op`` to the plugin table."""
    if op in RULES and not replace:
        raise ValueError(f"op rule for '{op}' is already registered by {RULES[op].__module__}")
    if replace and dict.__contains__(RULES, op):
        dict.__delitem__(RULES, op)
    RULES.add(op, fn, fn.__module__)
    return fn


def get_rule(op: str) -> Rule | None:
    return plugin_op_rules().get(op)


def known_ops() -> list[str]:
    return sorted(plugin_op_rules())


def suggest_op(op: str) -> str:
    return suggest(op, known_ops())


__all__ = ["RULES", "Unsupported", "Violation", "get_rule", "known_ops",
           "plugin_op_rules", "register_rule", "rule", "rules_in"]
