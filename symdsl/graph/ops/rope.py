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

- :func:`table_pair_layout`: a slice of a *precomputed table*, a model buffer (timm's
  ``RotaryEmbeddingCat`` keeps ``cat((sin, cos), -1)`` of shape (patches, 2 n) and each attention
  takes ``sin, cos = table.chunk(2, -1)``): the graph does not show how the buffer was made, but
  a buffer is a constant of the model, so its value is read: the piece's last axis must be equal,
  exactly, on every pair of a layout. Followed from the multiplied operand back to the buffer
  through the same ops as above plus the pieces of a ``chunk``/``split`` and a unit-step slice
  along the last axis (which only move the window read from the buffer).

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


def _last_axis_step(graph, node, rank: int) -> tuple | None:
    """``(source ref, offset)`` when ``node`` reads entries ``offset ...`` of its source's last axis
    in order and leaves the other axes' values alone: a piece of ``chunk``/``split`` along the last
    axis, a unit-step slice along it, an op that keeps the last axis (see :func:`pair_constant`)."""
    op, args = node.op, node.args
    if op == "getitem" and len(args) == 2 and isinstance(args[0], Ref) and isinstance(args[1], int):
        parent = graph.node(args[0].name)
        shapes = parent.shape
        dim = parent.args[2] if len(parent.args) > 2 else parent.kwargs.get("dim", 0)
        if parent.op not in ("chunk", "split", "split_with_sizes") or not parent.args or \
                not isinstance(parent.args[0], Ref) or not shapes or not isinstance(shapes[0], tuple) or \
                not isinstance(dim, int) or dim % rank != rank - 1 or any(len(s) != rank for s in shapes):
            return None
        return parent.args[0], sum(s[-1] for s in shapes[:args[1]])
    if op == "slice":
        found = _slice_range(node)
        if found is not None and found[1] == rank - 1:
            source = graph.node(found[0].name)
            total = source.shape[-1] if _rank(source) == rank else None
            if total is None or found[2] < 0:
                return None
            return found[0], found[2]
    refs = node.refs()
    if len(refs) != 1 or not args or args[0] != refs[0]:
        return None
    source = graph.node(refs[0].name)
    source_rank = _rank(source)
    if op in ELEMENTWISE or (op in ("mul", "div", "add", "sub") and len(args) >= 2 and all(
            isinstance(a, (int, float)) and not isinstance(a, bool) for a in args[1:2])):
        return (refs[0], 0) if source_rank == rank else None
    if op == "unsqueeze" and isinstance(args[1], int) and args[1] % rank != rank - 1:
        return refs[0], 0
    if op == "expand" and source_rank is not None and source.shape[-1] == node.shape[-1]:
        return refs[0], 0
    if op in ("select", "slice") and source_rank is not None:
        dim = args[1] if len(args) > 1 else 0
        if isinstance(dim, int) and dim % source_rank != source_rank - 1:
            return refs[0], 0
    return None


def table_pair_layout(graph, raw, buffer_value, depth: int = 24) -> str | None:
    """``"interleaved"`` (pairs ``(2i, 2i + 1)``) or ``"half"`` (pairs ``(i, i + n/2)``) when the
    tensor ``raw`` (a :class:`Ref`) is a window of a model buffer's last axis whose values are
    equal on both coordinates of every pair of that layout (checked in that order); else None.
    ``buffer_value(ref)`` gives a buffer node's tensor (None for anything else).

    >>> import torch
    >>> from symdsl.graph.capture_types import CapturedGraph, OpNode
    >>> table = torch.tensor([[1., 1., 2., 2., 5., 6., 5., 6.]])        # (1, 8): interleaved | half
    >>> g = CapturedGraph("demo", [OpNode("t", "param", (), {}, "t", (1, 8)),
    ...     OpNode("c", "chunk", (Ref("t"), 2, -1), {}, "chunk", ((1, 4), (1, 4))),
    ...     OpNode("sin", "getitem", (Ref("c"), 0), {}, "getitem", (1, 4)),
    ...     OpNode("cos", "getitem", (Ref("c"), 1), {}, "getitem", (1, 4))], {"t": ["t"]}, [], [])
    >>> value = lambda ref: table if ref.name == "t" else None
    >>> table_pair_layout(g, Ref("sin"), value), table_pair_layout(g, Ref("cos"), value)
    ('interleaved', 'half')
    """
    if not isinstance(raw, Ref):
        return None
    start = graph.node(raw.name)
    if not _rank(start) or not start.shape[-1] or start.shape[-1] % 2:
        return None
    n, offset = start.shape[-1], 0
    for _ in range(depth):
        node = graph.node(raw.name)
        if node.op == "param":
            value = buffer_value(raw)
            if value is None or value.dim() == 0 or offset + n > value.shape[-1]:
                return None
            window = value[..., offset:offset + n]
            if bool((window[..., 0::2] == window[..., 1::2]).all()):
                return INTERLEAVED
            if bool((window[..., :n // 2] == window[..., n // 2:]).all()):
                return HALF
            return None
        rank = _rank(node)
        if not rank:
            return None
        step = _last_axis_step(graph, node, rank)
        if step is None:
            return None
        raw, offset = step[0], offset + step[1]
    return None
