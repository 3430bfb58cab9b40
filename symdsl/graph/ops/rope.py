"""Recognising rotary position embeddings (RoPE) in a captured graph: graph patterns only.

Hugging Face models apply RoPE along the head dimension in one of two pair layouts. Along that
axis both of its maps act on each coordinate pair as a complex scalar (a scaled 2x2 rotation):

* **half** (Llama, GPT-NeoX, Phi-3, ...): pairs ``(i, i + n/2)``; ``q * cos + rotate_half(q) * sin``
  with ``rotate_half(x) = cat((-x[..., n/2:], x[..., :n/2]), -1)`` and ``cos``/``sin`` computed
  from ``emb = cat((freqs, freqs), -1)``;
* **interleaved** (GPT-J's ``rotate_every_two``): pairs ``(2i, 2i + 1)``;
  ``rotate_every_two(x) = stack((-x[..., 1::2], x[..., ::2]), -1).flatten(-2)`` and tables
  ``repeat_interleave(sin, 2, -1)``.

- :func:`rotate_half_source` / :func:`rotate_every_two_source`: a ``cat`` (resp. a ``flatten``
  or ``view`` of a ``stack``) that is the pair-swap J of x (a rotation by 90 degrees in every
  pair); :func:`rotate_half_uses` / :func:`rotate_every_two_uses`: a ``slice`` of x whose every
  use is such a construction of x (so no piece of x escapes);
- :func:`pair_constant`: a tensor whose last axis is constant on every pair by construction
  (``cat((a, a), -1)``: half; ``repeat_interleave(a, 2, -1)``: interleaved), kept so by
  elementwise functions (cos, sin, casts, arithmetic with numbers) and by ops on the other axes
  (unsqueeze, expand, select, slice). Multiplying by it scales each pair.

Partial rotary (GPT-NeoX's ``rotary_pct``, GPT-J's ``rotary_dim``, Phi's
``partial_rotary_factor``) slices each head into ``q[..., :r]`` (rotated as above) and
``q[..., r:]`` (passed through), then ``cat``s them back: the slices and the cat are ordinary
``slice``/``cat`` rules, which follow a head typed ``[qk | qkp]`` at its parts' boundary.

All facts are structural (read off the graph, never off values), so the rules that use them
(:mod:`.select`, :mod:`.layout`, :mod:`.elementwise`) state ``call.rotary(axis, layout, ...)``
and each analysis decides what may act on the axis.
"""
from __future__ import annotations

from ..capture_types import Ref
from ..shapes import PASS_THROUGH

HALF = "half"
INTERLEAVED = "interleaved"
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


def _strided_slice(node) -> tuple | None:
    """``(source ref, dim, start, end, step)`` of a slice node (dim and bounds normalised)."""
    if node.op != "slice" or not node.args or not isinstance(node.args[0], Ref):
        return None
    args = list(node.args) + [None] * 5
    dim, start, end, step = (args[1] if args[1] is not None else 0), args[2], args[3], args[4]
    rank = _rank(node)
    if rank is None or not all(isinstance(v, (int, type(None))) for v in (dim, start, end, step)):
        return None
    return node.args[0], dim % rank, start or 0, _BIG if end is None else end, step or 1


def _through_neg(graph, ref, user_name: str) -> tuple:
    """``(node, negated)``: the node behind ``ref``, looking through a ``neg`` used only by ``user_name``."""
    node = graph.node(ref.name)
    if node.op == "neg":
        if not isinstance(node.args[0], Ref) or [u.name for u in graph.users(node.name)] != [user_name]:
            return None, False
        return graph.node(node.args[0].name), True
    return node, False


def rotate_every_two_source(graph, node) -> tuple | None:
    """``(x ref, dim)`` when ``node`` is GPT-J's ``rotate_every_two(x)`` along x's last axis:
    ``stack((-x[..., 1::2], x[..., ::2]), -1)`` (or with the minus on the other slice), then
    ``flatten(-2, -1)`` (or a view/reshape back to x's shape); the stack, slices and neg are
    used only there. None otherwise."""
    if node.op not in ("flatten", "view", "reshape", "_unsafe_view") or not node.args or \
            not isinstance(node.args[0], Ref):
        return None
    stack = graph.node(node.args[0].name)
    rank = _rank(node)
    stack_rank = _rank(stack)
    if stack.op != "stack" or rank is None or stack_rank != rank + 1 or not stack.args or len(stack.args[0]) != 2:
        return None
    if [u.name for u in graph.users(stack.name)] != [node.name] or stack.shape[-1] != 2 or \
            tuple(node.shape) != tuple(stack.shape[:-2]) + (2 * stack.shape[-2],):
        return None
    if node.op == "flatten":
        ends = [a % stack_rank for a in node.args[1:3] if isinstance(a, int)]
        if ends != [stack_rank - 2, stack_rank - 1]:
            return None
    dim = stack.args[1] if len(stack.args) > 1 else stack.kwargs.get("dim", 0)
    if not isinstance(dim, int) or dim % stack_rank != stack_rank - 1:
        return None
    found, negs = [], 0
    for ref in stack.args[0]:
        if not isinstance(ref, Ref):
            return None
        piece, negated = _through_neg(graph, ref, stack.name)
        sliced = _strided_slice(piece) if piece is not None else None
        if sliced is None or _rank(piece) != rank:
            return None
        negs += negated
        found.append(sliced)
    (src_a, dim_a, start_a, end_a, step_a), (src_b, dim_b, start_b, end_b, step_b) = found
    source = graph.node(src_a.name)
    n = source.shape[rank - 1] if _rank(source) == rank else None
    if negs != 1 or src_a != src_b or dim_a != dim_b or dim_a != rank - 1 or not n or n % 2:
        return None
    # the odd coordinates first, then the even ones: (x_2i, x_2i+1) -> (-x_2i+1, x_2i), i.e. times i
    if (start_a, step_a, start_b, step_b) != (1, 2, 0, 2) or min(end_a, n) != n or min(end_b, n) != n:
        return None
    return src_a, rank - 1


def rotate_every_two_uses(graph, node) -> bool:
    """Is ``node`` a step-2 slice whose every use (directly or through a neg) is a stack that
    builds ``rotate_every_two`` of the slice's own source?"""
    found = _strided_slice(node)
    if found is None or found[4] != 2:
        return False
    users = graph.users(node.name)
    for user in users:
        stacks = graph.users(user.name) if user.op == "neg" else [user]
        if len(stacks) != 1 or stacks[0].op != "stack":
            return False
        flats = graph.users(stacks[0].name)
        if len(flats) != 1:
            return False
        source = rotate_every_two_source(graph, flats[0])
        if source is None or source[0] != found[0]:
            return False
    return bool(users)


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
    ``(i, i + n/2)`` of its last axis by construction, ``"interleaved"`` when on every pair
    ``(2i, 2i + 1)`` (see the module docstring); else None."""
    for _ in range(depth):
        if not isinstance(raw, Ref):
            return None
        node = graph.node(raw.name)
        rank = _rank(node)
        if rank is None or rank == 0:
            return None
        op, args = node.op, node.args
        if op == "repeat_interleave":
            # repeat_interleave(a, 2, -1): v[..., 2i] == v[..., 2i + 1] == a[..., i]
            repeats = args[1] if len(args) > 1 else node.kwargs.get("repeats")
            dim = args[2] if len(args) > 2 else node.kwargs.get("dim")
            ok = isinstance(repeats, int) and repeats == 2 and isinstance(dim, int) and dim % rank == rank - 1
            return INTERLEAVED if ok and isinstance(args[0], Ref) else None
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
