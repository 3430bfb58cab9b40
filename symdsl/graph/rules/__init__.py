"""Op rules for the static check: how each op moves symmetry types, and what it forbids.

A rule is ``fn(ctx) -> value``: it reads its inputs' types through ``ctx`` and returns the
output's type, or raises :class:`Violation` (via ``ctx.fail``) when the op breaks a site.
Ops without a rule pass only when none of their inputs carries a site (fail closed).
The rule table is a value (``registries.op_rules``): plugins add rules through the
``symdsl_op_rules`` hook.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..types import SplitAxis, Stacked, is_tensor_type, untyped


class Violation(Exception):
    """An op breaks a declared symmetry."""

    def __init__(self, message: str, site: str | None = None, rule: str = ""):
        super().__init__(message)
        self.message, self.site, self.rule = message, site, rule


PERMUTATION_LIKE = ("permutation", "semi_permutation")


@dataclass
class RuleContext:
    """What a rule sees: the node, its inputs' types, the spec's sites, parameter values."""

    node: Any                                  # capture OpNode
    values: dict[str, Any]                     # node name -> abstract value
    sites: dict                                # site name -> SiteDef
    tensors: Callable[[str], Any] = lambda name: None   # node name -> actual parameter tensor (or None)
    notes: list[str] = field(default_factory=list)

    # -- inputs -------------------------------------------------------------------------
    def resolve(self, arg):
        from ..capture import Ref

        if isinstance(arg, Ref):
            return self.values.get(arg.name)
        if isinstance(arg, (list, tuple)):
            return type(arg)(self.resolve(a) for a in arg)
        return arg

    def arg(self, index: int, default=None):
        args = self.node.args
        return self.resolve(args[index]) if index < len(args) else default

    def kwarg(self, name: str, default=None):
        return self.resolve(self.node.kwargs[name]) if name in self.node.kwargs else default

    def arg_or_kwarg(self, index: int, name: str, default=None):
        if index < len(self.node.args):
            return self.arg(index)
        return self.kwarg(name, default)

    def tensor_arg(self, index: int):
        """The type of positional arg ``index``, which must be a tensor (or untyped if it is a literal)."""
        value = self.arg(index)
        if isinstance(value, Stacked):
            self.fail("a fused (q|k|v) tensor reshaped into parts reaches this op before it is split into its parts")
        return value

    def param_value(self, index: int):
        from ..capture import Ref

        args = self.node.args
        if index < len(args) and isinstance(args[index], Ref):
            return self.tensors(args[index].name)
        return None

    # -- sites --------------------------------------------------------------------------
    def kind(self, site: str) -> str:
        return self.sites[site].kind.name

    def permutation_like(self, site: str) -> bool:
        return self.kind(site) in PERMUTATION_LIKE

    def describe(self, site: str) -> str:
        s = self.sites[site]
        extra = ", preserve ones" if s.options.get("preserve") == "ones" else ""
        per = f", per {s.per}" if s.per else ""
        return f"site {site} ({s.kind.name}{extra}{per})"

    def fail(self, message: str, site: str | None = None, rule: str | None = None):
        raise Violation(message, site, rule or self.node.op)

    def output_untyped(self):
        shape = self.node.shape
        if shape is None:
            return None
        if shape and isinstance(shape[0], tuple):
            return tuple(untyped(s) for s in shape)
        return untyped(shape)


Rule = Callable[[RuleContext], Any]


def rule(*ops: str):
    """Mark a function as the rule for these op names; a plugin's ``symdsl_op_rules`` hook
    collects marked functions with :func:`rules_in`."""
    def wrap(fn: Rule) -> Rule:
        fn.symdsl_ops = tuple(ops)
        return fn
    return wrap


def rules_in(*modules) -> dict[str, Rule]:
    """``{op: rule}`` for every function marked with :func:`rule` in these modules."""
    found: dict[str, Rule] = {}
    for module in modules:
        for value in vars(module).values():
            for op in getattr(value, "symdsl_ops", ()):
                if op in found and found[op] is not value:
                    raise ValueError(f"two rules for op '{op}' in {module.__name__}")
                found[op] = value
    return found


__all__ = ["Violation", "RuleContext", "rule", "rules_in",
           "PERMUTATION_LIKE", "SplitAxis", "Stacked", "is_tensor_type"]
