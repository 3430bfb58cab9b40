"""Rules for a mixture of experts' routing: topk, index (a gather of rows), repeat_interleave.

A sparse MoE block (transformers' Mixtral with the ``batched_mm`` experts, see
:mod:`symdsl.models.kernels`) routes every token to k of E experts::

    logits = linear(x, router)               # (T, E): one row of the router per expert
    weights, ids = topk(softmax(logits), k)  # (T, k) each: the k best experts of each token
    rows = repeat_interleave(x, k, 0)        # (S, d), S = T * k
    w = gate_up_proj[ids.reshape(-1)]        # (S, 2f, d): each row's expert's weights
    ...bmm(w, rows), silu, bmm(down_proj[ids.reshape(-1)], ...), * weights, view(T, k, d).sum(1)

Permuting the experts together with the router's rows leaves this function unchanged: topk
then returns the same values and the permuted positions of the same experts, and gathering
the permuted weights at the permuted positions gives the same rows. So:

- ``topk`` ranks the coordinates of one axis (``call.indexes``: only a permutation of those
  positions keeps the ranking and its values). Its values carry nothing; its indices are
  positions on the ranked axis, which symdsl follows only into gathers (below): any other use
  of them (a comparison, a one-hot, a scatter, the model output) fixes the ranked axis;
- ``index`` with one index tensor gathers entries of one axis. When the index tensor is such
  topk indices (through reshapes and casts, :func:`pointer_source`), the gathered axis and the
  ranked axis are one space (``call.same``): the router's rows and the experts' stacked axis
  must carry the same site. Any other index fixes the gathered axis (as an embedding lookup);
- ``repeat_interleave`` copies each entry of an axis: that axis must carry no site.

A per-expert site (SwiGLU units ``per`` the expert permutation) stays on the gathered weights'
other axes: row s of the gather holds expert ids[s], so its units carry that expert's element,
the same for every tensor gathered with the same indices.

>>> rules = rules_in(topk_rule, index_rule, repeat_interleave_rule)
>>> sorted(rules)
['index', 'repeat_interleave', 'topk']
"""
from __future__ import annotations

import torch

from ..capture_types import Ref
from ..shapes import PASS_THROUGH
from ..walker import Unsupported
from .base import op_rule, rules_in

# ops that keep the values of an index tensor (only its shape or dtype changes)
KEEP_VALUES = PASS_THROUGH + ("view", "reshape", "_unsafe_view", "flatten", "unsqueeze", "squeeze", "_to_copy")
RANKS = "topk (ranks the coordinates of this axis)"


def _indices_of(graph, topk) -> list:
    """The getitem nodes that take topk's second output (the indices)."""
    return [u for u in graph.users(topk.name) if u.op == "getitem" and len(u.args) > 1 and u.args[1] == 1]


def stray_pointer_use(graph, topk):
    """The first node that uses ``topk``'s indices other than as the index tensor of a gather
    (through value-keeping ops, :data:`KEEP_VALUES`); None when every use is such a gather.

    >>> from symdsl.graph.capture_types import CapturedGraph, OpNode, Ref
    >>> nodes = [OpNode("x", "input", (), {}, "x", (4, 3)), OpNode("w", "param", (), {}, "w", (3, 5)),
    ...          OpNode("t", "topk", (Ref("x"), 2), {}, "aten.topk", ((4, 2), (4, 2))),
    ...          OpNode("i", "getitem", (Ref("t"), 1), {}, "getitem", (4, 2)),
    ...          OpNode("r", "reshape", (Ref("i"), [8]), {}, "aten.reshape", (8,)),
    ...          OpNode("g", "index", (Ref("w"), [Ref("r")]), {}, "aten.index", (8, 5)),
    ...          OpNode("out", "output", (Ref("g"),), {}, "output")]
    >>> graph = CapturedGraph("export", nodes, {"w": ["w"]}, ["x"], ["out"])
    >>> stray_pointer_use(graph, graph.node("t")) is None
    True
    """
    pending = list(_indices_of(graph, topk))
    seen: set[str] = set()
    while pending:
        node = pending.pop()
        if node.name in seen:
            continue
        seen.add(node.name)
        for user in graph.users(node.name):
            if user.op in KEEP_VALUES and user.args and user.args[0] == Ref(node.name):
                pending.append(user)
            elif not (user.op == "index" and _index_tensor(user) == Ref(node.name)):
                return user
    return None


def pointer_source(graph, ref) -> tuple | None:
    """``(topk node, dim)`` when ``ref`` holds topk's indices along ``dim`` (through value-keeping
    ops only); None otherwise."""
    for _ in range(16):
        if not isinstance(ref, Ref):
            return None
        node = graph.node(ref.name)
        if node.op == "getitem" and len(node.args) > 1 and node.args[1] == 1 and isinstance(node.args[0], Ref):
            topk = graph.node(node.args[0].name)
            if topk.op != "topk":
                return None
            shape = graph.node(topk.args[0].name).shape if isinstance(topk.args[0], Ref) else None
            dim = topk.args[2] if len(topk.args) > 2 else topk.kwargs.get("dim", -1)
            if shape is None or not isinstance(dim, int):
                return None
            return topk, dim % len(shape)
        if node.op not in KEEP_VALUES or not node.args:
            return None
        ref = node.args[0]
    return None


def _index_tensor(node):
    """The one index tensor of ``aten.index.Tensor(x, [None, ..., ids])`` (None if not exactly one)."""
    indices = node.args[1] if len(node.args) > 1 else node.kwargs.get("indices")
    given = [i for i in (indices or ()) if i is not None]
    return given[0] if len(given) == 1 else None


@op_rule("topk")
def topk_rule(call):
    # topk(x (..., n, ...), k, dim) -> values, indices (..., k, ...): the k highest coordinates of dim
    x = call.tensor(0)
    k = call.arg(1, name="k")
    dim = call.arg(2, -1, name="dim") % len(x)
    call.indexes(x[dim], RANKS)
    stray = stray_pointer_use(call.graph, call.node)
    if stray is not None:
        call.fixed(x[dim], f"topk's indices reach node {stray.name} ({stray.op}), which symdsl does not follow "
                           "(it follows them only as the index tensor of a gather, x[ids])")
    ranked = x[:dim] + (call.new_axis(k),) + x[dim + 1:]     # the k choices carry nothing
    return [ranked, ranked]


@op_rule("index")
def index_rule(call):
    # aten.index.Tensor(x, [None, ..., ids]): x[..., ids, ...], the axis at ids's position replaced
    # by ids's axes (router ids (S,) into gate_up_proj (E, 2f, d) -> (S, 2f, d))
    x = call.tensor(0)
    indices = call.arg(1, name="indices") or []
    given = [p for p, r in enumerate(indices) if r is not None]
    if not given or not all(isinstance(indices[p], Ref) for p in given):
        raise Unsupported("index by something other than index tensors")
    if len(given) > 1:
        return _gather_positions(call, x, indices, given)
    p = given[0]
    ref = indices[p]
    if call.graph.node(ref.name).dtype == torch.bool:
        raise Unsupported("index by a boolean mask")
    ids = call.as_tensor(call.resolve(ref), "the index tensor")
    source = pointer_source(call.graph, ref)
    if source is None:
        call.fixed(x[p], "index gathers entries of this axis at computed positions")
    else:
        topk, dim = source
        ranked = call.as_tensor(call.resolve(topk.args[0]), "topk's input")[dim]
        call.same(ranked, x[p], f"index gathers axis {p} of its input at the positions topk (node {topk.name}) "
                                f"ranked: the ranked axis (the router's rows) and the gathered axis (the experts) "
                                "must carry the same site (bind the router weight's rows to the experts' site)")
    return x[:p] + tuple(ids) + x[p + 1:]


def _gather_positions(call, x: tuple, indices: list, given: list[int]) -> tuple:
    # x[ids0, ids1] with several index tensors (CLIP's pooled token: hidden[arange(B), eos]): each
    # indexed axis is read at computed positions, so no symmetry may move it; the broadcast index
    # shape replaces them (in place when they are adjacent, first otherwise, as in numpy); the
    # other axes pass through untouched
    for p in given:
        ref = indices[p]
        if call.graph.node(ref.name).dtype == torch.bool:
            raise Unsupported("index by a boolean mask")
        if pointer_source(call.graph, ref) is not None:
            raise Unsupported("index by topk's positions together with other index tensors")
        call.fixed(x[p], "index gathers entries of this axis at computed positions")
    shape = call.node.shape
    if not isinstance(shape, tuple) or len(shape) < len(x) - len(given):
        raise Unsupported("index whose output shape is unknown")
    rest = [axis for p, axis in enumerate(x) if p not in given]
    start = given[0] if given == list(range(given[0], given[-1] + 1)) else 0     # adjacent: in place
    count = len(shape) - len(rest)
    picked = tuple(call.new_axis(n, "positions gathered by index") for n in shape[start:start + count])
    return tuple(rest[:start]) + picked + tuple(rest[start:])


@op_rule("repeat_interleave")
def repeat_interleave_rule(call):
    # repeat_interleave(x (n, d), r, dim=0) -> (n * r, d): each entry of dim copied r times
    x = call.tensor(0)
    repeats, dim = call.arg(1, name="repeats"), call.arg(2, None, name="dim")
    if not isinstance(repeats, int) or dim is None:
        raise Unsupported("repeat_interleave by a tensor of counts, or of the flattened tensor")
    dim %= len(x)
    call.fixed(x[dim], "repeat_interleave copies the entries of this axis")
    return x[:dim] + (call.new_axis(call.size(x[dim]) * repeats),) + x[dim + 1:]


__all__ = ["index_rule", "pointer_source", "repeat_interleave_rule", "stray_pointer_use", "topk_rule"]
