"""Recognising rotary position embeddings (RoPE) in a captured graph: graph patterns only.

Hugging Face models apply RoPE along the head dimension as ``q * cos + rotate_half(q) * sin``
with ``rotate_half(x) = cat((-x[..., n/2:], x[..., :n/2]), -1)`` and ``cos``/``sin`` computed
from ``emb = cat((freqs, freqs), -1)``. Along that axis both are fixed maps that act on each
coordinate pair ``(i, i + n/2)`` as a complex scalar (a scaled 2x2 rotation):

- :func:`rotate_half_source`: a ``cat`` that is ``rotate_half(x)`` (the pair-swap J, a rotation
  by 90 degrees in every pair), or a ``slice`` of x whose every use is such a cat;
- :func:`pair_constant`: a tensor whose last axis is constant on every pair (``v[..., i] ==
  v[..., i + n/2]`` at every index of the other axes): made by ``cat((a, a), -1)`` of one node
  ``a`` and kept by elementwise functions (cos, sin, casts, arithmetic with numbers) and by
  ops on the other axes (unsqueeze, expand, select, slice). Multiplying by it scales each pair.

Both facts are structural (read off the graph, never off values), so the rules that use them
(:mod:`.select`, :mod:`.elementwise`) state ``call.rotary(axis, "half", ...)`` and each
analysis decides what may act on the axis.

>>> from symdsl.graph.capture_types import OpNode, Ref
"""
from __future__ import annotations

from ..capture_types import Ref
from ..shapes import PASS_THROUGH

HALF = "half"
ELEMENTWISE = PASS_THROUGH + ("neg", "positive", "cos", "sin")
_BIG = 2 ** 62


def _rank(node) -> int | None:
    shape = node.shape
    if shape is None or (shape and isinstance(shape[0], tuple)):
        return None
    return len(shape)


def _slice_range(node) -> tuple | None:
    """``(source ref, dim, start, end)`` of a unit-step slice node (dim and bounds normalised)."""
    if node.op != "slice" or not node.args or not isinstance(node.args[0], Ref):
        return None
    args = list(node.args) + [None] * 5
    dim, start, end, step = (args[1] if args[1] is not None else 0), args[2], args[3], args[4]
    rank = _rank(node)
    if rank is None or step not in (None, 1) or not all(isinstance(v, (int, type(None))) for v in (dim, start, end)):
        return None
    return node.args[0], dim % rank, start or 0, _BIG if end is None else end


def rotate_half_source(graph, cat) -> tuple | None:
    """``(x ref, dim)`` when ``cat`` is ``rotate_half(x)`` along ``dim`` (the last axis of x):
    ``cat((-x[..., n/2:], x[..., :n/2]), dim)`` (or with the minus on the other half), each
    slice and neg used only there. None otherwise."""
    if cat.op not in ("cat", "concat", "concatenate") or not cat.args or len(cat.args[0]) != 2:
        return None
    rank = _rank(cat)
    dim = cat.args[1] if len(cat.args) > 1 else cat.kwargs.get("dim", 0)
    if rank is None or not isinstance(dim, int) or dim % rank != rank - 1:
        return None
    halves, negs = [], 0
    for ref in cat.args[0]:
        if not isinstance(ref, Ref):
            return None
        node = graph.node(ref.name)
        if node.op == "neg":
            if not isinstance(node.args[0], Ref) or [u.name for u in graph.users(node.name)] != [cat.name]:
                return None
            negs += 1
            node = graph.node(node.args[0].name)
        found = _slice_range(node)
        if found is None or _rank(node) != rank:
            return None
        halves.append((found, node))
    if negs != 1:
        return None
    (src_a, dim_a, start_a, end_a), _ = halves[0]
    (src_b, dim_b, start_b, end_b), _ = halves[1]
    source = graph.node(src_a.name)
    n = source.shape[rank - 1] if _rank(source) == rank else None
    if src_a != src_b or dim_a != dim_b or dim_a != rank - 1 or not n or n % 2:
        return None
    if (start_a, min(end_a, n)) != (n // 2, n) or (start_b, min(end_b, n)) != (0, n // 2):
        return None
    return src_a, rank - 1


def rotate_half_uses(graph, node) -> bool:
    """Is ``node`` a slice whose every use (directly or through a neg) is a ``rotate_half`` cat
    of the slice's own source?"""
    found = _slice_range(node)
    if found is None:
        return False
    users = graph.users(node.name)
    for user in users:
        cats = graph.users(user.name) if user.op == "neg" else [user]
        if user.op == "neg" and len(cats) != 1:
            return False
        for cat in cats:
            source = rotate_half_source(graph, cat)
            if source is None or source[0] != found[0]:
                return False
    return bool(users)


def pair_constant(graph, raw, depth: int = 24) -> str | None:
    """``"half"`` when the tensor ``raw`` (a :class:`Ref`) is constant on every pair
    ``(i, i + n/2)`` of its last axis, by construction (see the module docstring); else None."""
    for _ in range(depth):
        if not isinstance(raw, Ref):
            return None
        node = graph.node(raw.name)
        rank = _rank(node)
        if rank is None or rank == 0:
            return None
        op, args = node.op, node.args
        if op in ("cat", "concat", "concatenate"):
            dim = args[1] if len(args) > 1 else node.kwargs.get("dim", 0)
            parts = args[0] if args else ()
            if isinstance(dim, int) and dim % rank == rank - 1 and len(parts) == 2 and \
                    isinstance(parts[0], Ref) and parts[0] == parts[1]:
                return HALF
            return None
        refs = node.refs()
        if len(refs) != 1 or not args or args[0] != refs[0]:
            return None
        source_rank = _rank(graph.node(refs[0].name))
        if op in ELEMENTWISE or (op in ("mul", "div", "add", "sub") and all(
                isinstance(a, (int, float)) and not isinstance(a, bool) for a in args[1:2])):
            if source_rank != rank or (op in ("mul", "div", "add", "sub") and len(args) < 2):
                return None
        elif op == "unsqueeze":
            if not isinstance(args[1], int) or args[1] % rank == rank - 1:
                return None
        elif op == "expand":
            if source_rank is None or graph.node(refs[0].name).shape[-1] != node.shape[-1]:
                return None
        elif op in ("select", "slice"):
            if source_rank is None or not isinstance(args[1] if len(args) > 1 else 0, int) or \
                    (args[1] if len(args) > 1 else 0) % source_rank == source_rank - 1:
                return None
        else:
            return None
        raw = refs[0]
    return None
