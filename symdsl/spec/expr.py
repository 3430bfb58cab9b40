"""Dimension expressions: integer arithmetic over config values, without eval().

Grammar (a subset of Python expressions, parsed with :mod:`ast` and walked here):
integers, names (config keys or earlier dims), ``a.b`` (nested config), ``+ - * // %``,
unary ``-``, parentheses, ``x or y`` (first value that is not None/0),
``min(..)``, ``max(..)``, ``len("module.path")`` (length of a ModuleList),
``shape("tensor.name", axis)`` and ``attr("module.path.attribute")``.
"""
from __future__ import annotations

import ast
import operator
from typing import Any, Callable, Mapping

_BINOPS: dict[type, Callable[[int, int], int]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
}


class ExprError(ValueError):
    """An expression could not be parsed or evaluated."""


def evaluate(text: int | str, names: Mapping[str, Any], functions: Mapping[str, Callable] | None = None) -> int:
    """Evaluate a dimension expression to an int.

    >>> evaluate("n_embd // n_head", {"n_embd": 768, "n_head": 12})
    64
    >>> evaluate("n_inner or 4 * n_embd", {"n_inner": None, "n_embd": 8})
    32
    """
    if isinstance(text, bool):
        raise ExprError(f"expected an integer expression, got {text!r}")
    if isinstance(text, int):
        return text
    try:
        tree = ast.parse(str(text), mode="eval")
    except SyntaxError as exc:
        raise ExprError(f"cannot parse expression {text!r}: {exc.msg}") from None
    value = _Evaluator(names, functions or {}, str(text)).visit(tree.body)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ExprError(f"expression {text!r} gave {value!r}, not an integer")
    return value


def names_used(text: int | str) -> set[str]:
    """Top-level names an expression reads (for dependency checks and error messages)."""
    if isinstance(text, int):
        return set()
    try:
        tree = ast.parse(str(text), mode="eval")
    except SyntaxError:
        return set()
    calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} - calls


class _Evaluator(ast.NodeVisitor):
    def __init__(self, names: Mapping[str, Any], functions: Mapping[str, Callable], text: str):
        self.names, self.functions, self.text = names, functions, text

    def generic_visit(self, node: ast.AST) -> Any:
        raise ExprError(f"{type(node).__name__} is not allowed in dimension expression {self.text!r}; "
                        "use integers, names, + - * // %, 'or', min/max/len/shape/attr")

    def visit_Constant(self, node: ast.Constant) -> Any:
        if isinstance(node.value, (int, str)) and not isinstance(node.value, bool):
            return node.value
        return self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> Any:
        if node.id not in self.names:
            from ..errors import suggest
            raise ExprError(f"unknown name '{node.id}' in {self.text!r}{suggest(node.id, self.names)}")
        return self.names[node.id]

    def visit_Attribute(self, node: ast.Attribute) -> Any:
        base = self.visit(node.value)
        if isinstance(base, Mapping) and node.attr in base:
            return base[node.attr]
        if hasattr(base, node.attr):
            return getattr(base, node.attr)
        raise ExprError(f"'{node.attr}' not found in {self.text!r}")

    def visit_BinOp(self, node: ast.BinOp) -> Any:
        op = _BINOPS.get(type(node.op))
        if op is None:
            return self.generic_visit(node)
        left, right = self.visit(node.left), self.visit(node.right)
        for side in (left, right):
            if isinstance(side, bool) or not isinstance(side, int):
                raise ExprError(f"arithmetic on non-integer {side!r} in {self.text!r}")
        if isinstance(node.op, (ast.FloorDiv, ast.Mod)) and right == 0:
            raise ExprError(f"division by zero in {self.text!r}")
        return op(left, right)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> Any:
        if isinstance(node.op, ast.USub):
            return -self.visit(node.operand)
        return self.generic_visit(node)

    def visit_BoolOp(self, node: ast.BoolOp) -> Any:
        if not isinstance(node.op, ast.Or):
            return self.generic_visit(node)
        value = None
        for operand in node.values:
            value = self.visit(operand)
            if value:
                return value
        return value

    def visit_Call(self, node: ast.Call) -> Any:
        builtin = {"min": min, "max": max}
        if not isinstance(node.func, ast.Name) or node.keywords:
            return self.generic_visit(node)
        name = node.func.id
        func = self.functions.get(name) or builtin.get(name)
        if func is None:
            raise ExprError(f"unknown function '{name}' in {self.text!r}; available: "
                            f"{', '.join(sorted(set(self.functions) | set(builtin)))}")
        try:
            return func(*[self.visit(arg) for arg in node.args])
        except ExprError:
            raise
        except Exception as exc:  # a model lookup failed: say which call
            raise ExprError(f"{name}(...) failed in {self.text!r}: {exc}") from None
