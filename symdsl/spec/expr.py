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

from .limits import MAX_EXPR_BITS, MAX_EXPR_CHARS

_BINOPS: dict[type, Callable[[int, int], int]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
}


_MISSING = object()

# friendlier names for the syntax that dimension expressions reject
_DESCRIBE = {
    "Compare": "a comparison", "Lambda": "lambda", "Subscript": "indexing",
    "IfExp": "if/else", "BoolOp": "'and'", "Starred": "*-unpacking", "List": "a list", "Tuple": "a tuple",
    "Dict": "a dict", "Set": "a set", "ListComp": "a comprehension", "GeneratorExp": "a generator",
    "DictComp": "a comprehension", "SetComp": "a comprehension", "JoinedStr": "an f-string",
    "NamedExpr": "':='", "Await": "await", "Yield": "yield", "YieldFrom": "yield", "Slice": "a slice",
    "UnaryOp": "this unary operator (only - is)",
}

_OP_SYMBOLS = {"Div": "/", "Pow": "**", "MatMult": "@", "LShift": "<<", "RShift": ">>", "BitOr": "|",
               "BitXor": "^", "BitAnd": "&"}


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
    if not isinstance(text, str):
        raise ExprError(f"expected an integer or an expression string, got {type(text).__name__} {text!r}")
    shown = text if len(text) <= 80 else text[:77] + "..."  # how messages quote it
    if len(text) > MAX_EXPR_CHARS:
        raise ExprError(f"expression {shown!r} has {len(text)} characters, more than the {MAX_EXPR_CHARS} allowed")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExprError(f"cannot parse expression {shown!r}: {exc.msg}") from None
    except (RecursionError, MemoryError, ValueError):
        raise ExprError(f"expression {shown!r} is too deeply nested or not parseable") from None
    try:
        value = _Evaluator(names, functions or {}, shown).visit(tree.body)
    except RecursionError:
        raise ExprError(f"expression {shown!r} is too deeply nested") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ExprError(f"expression {shown!r} gave {value!r}, not an integer")
    return value


def names_used(text: int | str) -> set[str]:
    """Top-level names an expression reads (for dependency checks and error messages)."""
    if isinstance(text, int) or len(str(text)) > MAX_EXPR_CHARS:
        return set()
    try:
        tree = ast.parse(str(text), mode="eval")
    except (SyntaxError, RecursionError, MemoryError, ValueError):
        return set()
    calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} - calls


class _Evaluator(ast.NodeVisitor):
    def __init__(self, names: Mapping[str, Any], functions: Mapping[str, Callable], text: str):
        self.names, self.functions, self.text = names, functions, text

    def generic_visit(self, node: ast.AST) -> Any:
        what = _DESCRIBE.get(type(node).__name__, type(node).__name__)
        raise ExprError(f"{what} is not allowed in dimension expression {self.text!r}; "
                        "use integers, names, + - * // %, 'or', min/max/len/shape/attr")

    def visit_Constant(self, node: ast.Constant) -> Any:
        if isinstance(node.value, (int, str)) and not isinstance(node.value, bool):
            return self.bounded(node.value) if isinstance(node.value, int) else node.value
        raise ExprError(f"{type(node.value).__name__} constant {node.value!r} is not allowed in dimension expression "
                        f"{self.text!r}; dimensions are integers (use // for division)")

    def visit_Name(self, node: ast.Name) -> Any:
        if node.id not in self.names:
            from ..errors import suggest
            raise ExprError(f"unknown name '{node.id}' in {self.text!r}{suggest(node.id, self.names)}")
        return self.names[node.id]

    def visit_Attribute(self, node: ast.Attribute) -> Any:
        if node.attr.startswith("_"):
            raise ExprError(f"attribute '{node.attr}' is not allowed in {self.text!r}: names starting with '_' "
                            "are private (a.b reads a nested config value)")
        base = self.visit(node.value)
        if isinstance(base, Mapping):
            if node.attr in base:
                return base[node.attr]
            from ..errors import suggest
            raise ExprError(f"'{node.attr}' not found in {self.text!r}{suggest(node.attr, [str(k) for k in base])}")
        if isinstance(base, (int, str, float, bytes, list, tuple, type(None))) or callable(base):
            raise ExprError(f"cannot read '.{node.attr}' of {type(base).__name__} {base!r} in {self.text!r}; "
                            "a.b reads a value of a nested config")
        value = getattr(base, node.attr, _MISSING)
        if value is _MISSING:
            raise ExprError(f"'{node.attr}' not found in {self.text!r}")
        if callable(value):
            raise ExprError(f"'{node.attr}' in {self.text!r} is not a value (methods cannot be used)")
        return value

    def visit_BinOp(self, node: ast.BinOp) -> Any:
        op = _BINOPS.get(type(node.op))
        if op is None:
            symbol = _OP_SYMBOLS.get(type(node.op).__name__, type(node.op).__name__)
            hint = "; use // for integer division" if isinstance(node.op, ast.Div) else ""
            raise ExprError(f"operator '{symbol}' is not allowed in dimension expression {self.text!r}{hint}; "
                            "allowed: + - * // %")
        left, right = self.visit(node.left), self.visit(node.right)
        for side in (left, right):
            if isinstance(side, bool) or not isinstance(side, int):
                raise ExprError(f"arithmetic on non-integer {side!r} in {self.text!r}")
        if isinstance(node.op, (ast.FloorDiv, ast.Mod)) and right == 0:
            raise ExprError(f"division by zero in {self.text!r}")
        if isinstance(node.op, ast.Mult) and left.bit_length() + right.bit_length() > MAX_EXPR_BITS + 1:
            self.bounded(1 << (MAX_EXPR_BITS + 1))          # refuse before computing a huge product
        return self.bounded(op(left, right))

    def bounded(self, value: int) -> int:
        """``value``, if it fits in :data:`MAX_EXPR_BITS` bits: sizes are small, and huge integers are slow."""
        if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_EXPR_BITS:
            raise ExprError(f"{self.text!r} computes a value of more than {MAX_EXPR_BITS} bits; dimensions are "
                            "sizes of tensors")
        return value

    def visit_UnaryOp(self, node: ast.UnaryOp) -> Any:
        if not isinstance(node.op, ast.USub):
            return self.generic_visit(node)
        value = self.visit(node.operand)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ExprError(f"arithmetic on non-integer {value!r} in {self.text!r}")
        return self.bounded(-value)

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
        if not isinstance(node.func, ast.Name):
            raise ExprError(f"only the functions min, max, len, shape and attr can be called in {self.text!r}")
        if node.keywords:
            raise ExprError(f"keyword arguments are not allowed in {self.text!r}")
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
