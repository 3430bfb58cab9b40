"""Which canonicalizers a draft needs: norm folding (with untying), and writer centring.

A norm's elementwise gain γ blocks rotations of the space it normalises, unless it can be
folded into the layers that read the norm's output (``fold_layernorm``). That needs every
path from the norm's output to end in a contraction with a *parameter* over the normalised
axis (through ops that leave that axis alone: views, transposes, token selection, dropout,
pooling over tokens), and the reader's weight not to be used for anything else — except a
tied alias used elsewhere (GPT-2's ``lm_head``/``wte``), which an ``untie`` step separates.

``center_writers`` subtracts the mean along the residual axis from every tensor that writes
into the stream; it preserves the function only when every reader of the raw stream removes
the mean itself, i.e. is a LayerNorm. :func:`plan_center` follows the stream from its writers
and checks that.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch

from ..canon import canonicalize
from ..errors import SymdslError
from ..graph.capture_types import Ref
from ..graph.shapes import PASS_THROUGH
from ..groups import get_group_kind
from ..registry import Registries
from ..spec.load import load_spec_text
from ..spec.resolve import resolve
from .walk import Walk

PASS = PASS_THROUGH + ("neg", "positive")
# ops that read a value without computing anything from it (export's dtype/device assertions)
_IGNORED = frozenset({"assert", "_assert_tensor_metadata"})
# ops that keep the normalised axis as it is, acting on other axes only (or not at all)
_TRANSPARENT = frozenset(PASS + ("dropout", "view", "reshape", "_unsafe_view", "flatten", "transpose", "permute",
                                 "unsqueeze", "squeeze", "select", "slice", "mean", "sum", "expand",
                                 "repeat_interleave", "index"))
# ops through which a constant shift of the stream stays a constant shift
_ADDITIVE = frozenset(PASS + ("dropout", "view", "reshape", "_unsafe_view", "flatten", "transpose", "permute",
                              "unsqueeze", "squeeze", "select", "slice", "expand", "add", "sub", "cat"))


def owner(name: str) -> str:
    """The module path owning a state-dict entry.

    >>> owner("h.0.ln_1.weight")
    'h.0.ln_1'
    """
    return name.rpartition(".")[0]


def alias_for(walk: Walk, param: str, module: str | None) -> str:
    """The state-dict name of ``param`` that the op in ``module`` uses (tied weights have several).

    >>> from types import SimpleNamespace
    >>> w = SimpleNamespace(graph=SimpleNamespace(params={"p_wte": ["wte.weight", "lm_head.weight"]}))
    >>> alias_for(w, "p_wte", "lm_head"), alias_for(w, "p_wte", None)
    ('lm_head.weight', 'wte.weight')
    """
    names = walk.graph.params.get(param, [param])
    return next((n for n in names if module is not None and owner(n) == module), names[0])


@dataclass
class FoldPlan:
    """How to fold one norm's gain: ``norm`` module, ``readers`` (state-dict names), ``unties``."""

    node: str
    kind: str                      # 'ln' or 'rms'
    var: int
    norm: str | None = None        # None: the norm has no gain, nothing to fold
    readers: list[str] = field(default_factory=list)
    unties: list[list[str]] = field(default_factory=list)
    untied_ops: set[str] = field(default_factory=set)   # reader ops that use the copy made by untie
    gain: str = "weight"           # how the stored weight gives the gain: 'weight' or 'one_plus' (1 + w)
    ok: bool = True
    why: str = ""


def _reader(walk: Walk, user, current: str, track: int):
    """(param node, axis) when ``user`` contracts ``current``'s tracked axis with a parameter."""
    values, args = walk.values, user.args
    cur = values.get(current)
    if not isinstance(cur, tuple):
        return None

    def param(arg):
        return arg.name if isinstance(arg, Ref) and arg.name in walk.param_axes else None

    if user.op == "linear" and args[0] == Ref(current) and cur[-1] == track and param(args[1]):
        return param(args[1]), 1
    if user.op == "addmm" and args[1] == Ref(current) and cur[1] == track and param(args[2]):
        return param(args[2]), 0
    if user.op in ("matmul", "mm") and args[0] == Ref(current) and cur[-1] == track and param(args[1]) \
            and len(walk.param_axes[param(args[1])]) == 2:
        return param(args[1]), 0
    if user.op == "bmm" and len(args) == 2 and args[1] == Ref(current) and len(cur) == 3 and cur[1] == track:
        # stacked experts: bmm(W[ids], x[..., None]) reads W (E, out, in) along its last axis
        picked = walk.graph.node(args[0].name) if isinstance(args[0], Ref) else None
        if picked is not None and picked.op == "index" and picked.args and param(picked.args[0]):
            return param(picked.args[0]), len(walk.param_axes[param(picked.args[0])]) - 1
    return None


def plan_fold(walk: Walk, record: tuple) -> FoldPlan:
    """Can the gain of the norm ``record`` (from :attr:`Walk.norms`) be folded, and into what?

    >>> from symdsl.plugins import load
    >>> import torch
    >>> from symdsl.graph import capture
    >>> from symdsl.infer.walk import walk
    >>> net = torch.nn.Sequential(torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    >>> w = walk(capture(net, torch.randn(3, 4)), set(net.state_dict()), load().op_rules)
    >>> plan = plan_fold(w, w.norms[0])
    >>> plan.ok, plan.norm, plan.readers
    (True, '0', ['1.weight'])
    """
    node, kind, var, weight, bias, form = record
    graph = walk.graph
    plan = FoldPlan(node, kind, var, gain=form)
    if weight is None:
        plan.why = "it has no gain"
        return plan
    if weight == "?" or bias == "?":
        return _fail(plan, "its gain or bias is computed, not a parameter")
    gain_names = graph.params[weight]
    if len(gain_names) != 1 or not gain_names[0].endswith(".weight"):
        return _fail(plan, f"its gain {gain_names} is not a single '<module>.weight' parameter")
    plan.norm = gain_names[0][: -len(".weight")]
    if bias is not None and graph.params[bias] != [plan.norm + ".bias"]:
        return _fail(plan, f"its bias {graph.params[bias]} is not '{plan.norm}.bias'")
    for param in (weight, bias):
        if param is not None and not _only_feeds(graph, param, node):
            return _fail(plan, "its gain or bias is also used elsewhere")

    readers: dict[str, list] = {}          # param node -> reader op nodes
    queue, seen = [(node, var)], {node}
    while queue:
        current, track = queue.pop()
        for user in graph.users(current):
            if user.op in _IGNORED:
                continue
            found = _reader(walk, user, current, track)
            if found is not None:
                readers.setdefault(found[0], []).append(user)
                continue
            out = walk.values.get(user.name)
            if (user.op in _TRANSPARENT or _by_a_number(user, current)) and isinstance(out, tuple) and track in out:
                if user.name not in seen:
                    seen.add(user.name)
                    queue.append((user.name, track))
                continue
            where = f"{user.op} in {user.module}" if user.module else user.op
            what = "is returned by the model" if user.op == "output" else f"reaches {where}"
            return _fail(plan, f"its output {what}, which cannot absorb the gain (post-norm: the gain sits "
                               "on the path, not in a reader's weight)")
    if not readers:
        return _fail(plan, "no linear layer reads its output")
    for param, ops in readers.items():
        names = graph.params[param]
        modules = {op.module for op in ops}
        reader_alias = alias_for(walk, param, next(iter(modules)))
        # a gather of stacked experts (W[ids]) whose every use is a reader counts as the reader
        others = [u for u in graph.users(param) if u not in ops
                  and not (u.op == "index" and all(x in ops for x in graph.users(u.name)))]
        if others:
            # the weight is shared (tied) with something that does not read this norm
            # (GPT-2's lm_head/wte; T5's lm_head with shared and both stacks' embed_tokens): each other
            # use must be through a name its own module owns, which untie leaves tied together
            rest = [n for n in names if n != reader_alias]
            if len(modules) != 1 or owner(reader_alias) not in modules or \
                    any(alias_for(walk, param, u.module) not in rest or owner(alias_for(walk, param, u.module)) != u.module
                        for u in others):
                return _fail(plan, f"its reader {reader_alias} shares its weight with another use")
            plan.unties.append([reader_alias, rest[0]])
            plan.untied_ops.update(u.name for u in ops)   # after untie they read the copy
        plan.readers.append(reader_alias)
    return plan


def _by_a_number(user, current: str) -> bool:
    """``x * c`` or ``x / c`` with a number ``c`` (T5 scales the decoder's output by d^-1/2 before
    lm_head): linear, so a gain folds through it into the reader."""
    return user.op in ("mul", "div") and len(user.args) == 2 and user.args[0] == Ref(current) and \
        isinstance(user.args[1], (int, float)) and not isinstance(user.args[1], bool)


def _only_feeds(graph, param: str, node: str) -> bool:
    """Is ``node`` the only use of ``param`` (through casts, and the ``1 +`` of an offset gain:
    ``weight.to(x.dtype) * x``, ``x * (1 + weight.float())``)?"""
    current = param
    for _ in range(8):
        users = [u for u in graph.users(current) if u.op not in _IGNORED]
        if [u.name for u in users] == [node]:
            return True
        if len(users) != 1 or users[0].op not in PASS_THROUGH + ("add",):
            return False
        current = users[0].name
    return False


def _fail(plan: FoldPlan, why: str) -> FoldPlan:
    plan.ok, plan.why = False, why
    return plan


@dataclass
class CenterPlan:
    """The writers of a residual stream to centre, or why it cannot be done."""

    writers: list[str] = field(default_factory=list)
    ok: bool = True
    why: str = ""


def plan_center(walk: Walk, root: int, excluded_ops: set[str]) -> CenterPlan:
    """Writers of the stream on class ``root``, if every raw reader of it is a LayerNorm.

    ``excluded_ops`` use an alias that an ``untie`` step separates from the writer.

    >>> from symdsl.plugins import load
    >>> import torch
    >>> from symdsl.graph import capture
    >>> from symdsl.infer.walk import walk
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    >>> w = walk(capture(net, torch.randn(5, 3)), set(net.state_dict()), load().op_rules)
    >>> plan_center(w, w.vars.root(w.param_axes["p_0_weight"][0]), set()).writers
    ['0.weight', '0.bias']
    """
    graph, vars = walk.graph, walk.vars
    plan = CenterPlan()

    def on_class(var) -> bool:
        return vars.root(var) == root and vars.structure(var) is None

    raw: set[str] = set()
    writers: dict[str, str] = {}
    for param, axes in walk.param_axes.items():
        if not any(on_class(a) for a in axes):
            continue
        users = [u for u in graph.users(param) if u.name not in excluded_ops]
        writes = []
        for user in users:
            role = _param_role(walk, user, param, on_class)
            if role == "read" or role == "norm":
                continue
            if role is None:
                return CenterPlan(ok=False, why=f"{graph.params[param][0]} is used by {user.op} in {user.module}")
            writes.append(user)
        if not writes:
            continue
        if any(_param_role(walk, u, param, on_class) == "read" for u in users):
            return CenterPlan(ok=False, why=f"{graph.params[param][0]} both writes and reads the stream")
        if sum(on_class(a) for a in axes) != 1:
            return CenterPlan(ok=False, why=f"{graph.params[param][0]} has several axes on the stream")
        writers[param] = alias_for(walk, param, writes[0].module)
        raw.update(u.name for u in writes)
    queue = list(raw)
    while queue:
        current = queue.pop()
        for user in graph.users(current):
            if user.name in raw or user.op in _IGNORED:
                continue
            cur = walk.values.get(current)
            if user.op == "layer_norm" and user.args[0] == Ref(current) and isinstance(cur, tuple) and on_class(cur[-1]):
                continue                      # LayerNorm subtracts the mean: the shift ends here
            out = walk.values.get(user.name)
            if user.op in _ADDITIVE and isinstance(out, tuple) and any(on_class(a) for a in out):
                raw.add(user.name)
                queue.append(user.name)
                continue
            where = "the model output" if user.op == "output" else f"{user.op} in {user.module}"
            return CenterPlan(ok=False, why=f"the raw stream reaches {where}, which does not remove its mean")
    plan.writers = [writers[p] for p in walk.param_axes if p in writers]
    return plan


def _param_role(walk: Walk, user, param: str, on_class) -> str | None:
    """'write' / 'read' / 'norm' for how ``user`` uses parameter ``param``'s stream axis; None if unknown."""
    axes = walk.param_axes[param]
    args = user.args
    position = next((i for i, a in enumerate(args) if a == Ref(param)), None)
    if user.op in ("layer_norm", "rms_norm"):
        return "norm"
    if user.op == "linear":
        return "read" if position == 1 and on_class(axes[1]) and not on_class(axes[0]) else "write"
    if user.op == "addmm":
        return "read" if position == 2 and on_class(axes[0]) and not on_class(axes[1]) else "write"
    if user.op in ("matmul", "mm"):
        return "read" if position == 1 and on_class(axes[0]) and not on_class(axes[-1]) else "write"
    if user.op in ("conv1d", "conv2d", "conv3d", "embedding"):
        return "write"
    if user.op in _ADDITIVE:
        return "write"
    return None


def fold_accepts_unbound_gain(registries: Registries) -> bool:
    """Does ``fold_layernorm`` fold a norm whose gain the spec declares invariant?

    An RMSNorm commutes with every rotation once its gain is 1, but a gain *bound* to the site
    (all ones after folding) is itself rotated, which only rotations fixing the ones vector
    survive. So an RMS residual gets full ``orthogonal`` only when the gain can stay unbound;
    this probes the given ``fold_layernorm`` canonicalizer on a two-layer toy model (once per
    canonicalizer object).

    >>> from symdsl.plugins import load
    >>> fold_accepts_unbound_gain(load()) in (True, False)
    True
    """
    fold = registries.canonicalizers.get("fold_layernorm")
    return fold is not None and _probe_fold(fold)


@functools.lru_cache(maxsize=4)
def _probe_fold(fold) -> bool:
    registries = Registries.empty().add("group kind", "orthogonal", get_group_kind("orthogonal")) \
        .add("canonicalizer", "fold_layernorm", fold)

    model = torch.nn.Sequential(torch.nn.RMSNorm(3), torch.nn.Linear(3, 2)).double()
    with torch.no_grad():
        model[0].weight.fill_(2.0)
    text = ('symdsl: 1\nname: probe\nsites: {r: {group: orthogonal, size: 3}}\n'
            'canonicalize: [{fold_layernorm: {norm: "0", readers: ["1.weight"]}}]\n'
            'tensors: {"1.weight": "_ r\'"}\ninvariant: ["0.weight", "1.bias"]\n')
    x = torch.randn(4, 3, dtype=torch.float64)
    before = model(x)
    try:
        canonicalize(model, resolve(load_spec_text(text), model, registries=registries))
    except (SymdslError, ValueError):
        return False
    return bool(torch.allclose(model(x), before) and (model[0].weight == 1).all())
