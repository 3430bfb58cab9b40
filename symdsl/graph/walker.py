"""One walk over a captured graph, shared by the static check and spec inference.

:class:`GraphWalker` runs the nodes in order (like :class:`torch.fx.Interpreter`: one
:meth:`~GraphWalker.run_node` per node) and evaluates each op with the rule that the op-rule
table (a ``Mapping`` from canonical op name to rule, passed in) gives for it. A rule is
``rule(call) -> value``: it reads its operands through an :class:`OpCall` and states what the
op does to their axes through the call's *semantic interface* (``same``, ``contract``,
``nonlinear``, ``indexes``, ``square``, ``shift``, ``summed``, ``gain``, ``fixed``, ``normalize``,
the reshape algebra, ...). Each
analysis subclasses both: the checker (:mod:`symdsl.graph.typecheck`,
:mod:`symdsl.graph.propagate`) verifies site types and reports violations, inference
(:mod:`symdsl.infer.unify`, :mod:`symdsl.infer.walk`) unites axis variables and records flags.
So every op has one rule, written once (:mod:`symdsl.graph.ops`).

A rule that meets a case it cannot follow raises :class:`Unsupported`; an op without a rule
does the same. Both analyses then fail closed: the checker reports it if a site reaches the
op, inference leaves every axis it touches unbound.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from .capture_types import Ref
from .shapes import PASS_THROUGH, Stacked, Unsupported

Rule = Callable[["OpCall"], Any]
OpRules = Mapping[str, Rule]

# errors a rule raises when a node does not look like the op it expects: fail closed on them
INTERPRET_ERRORS = (IndexError, TypeError, KeyError, AttributeError, ValueError, ZeroDivisionError)
LEAF_OPS = ("input", "constant", "placeholder", "get_attr")
# ops through which a parameter stays a function of itself alone (casts, arithmetic with a number)
SOURCE_OPS = PASS_THROUGH + ("neg", "positive", "add", "sub", "rsub", "mul", "div")


class OpCall:
    """What a rule sees of one node: its operands, and the semantic interface it states
    the op's effect through. Analyses subclass it and implement the interface.

    Operand access is shared: ``arg`` gives literal arguments (dims, sizes), ``value`` the
    abstract value of a tensor argument, ``tensor`` a plain tensor's tuple of axes.
    """

    def __init__(self, walker: "GraphWalker", node):
        self.walker, self.node = walker, node

    # -- operands -------------------------------------------------------------------------
    @property
    def op(self) -> str:
        return self.node.op

    @property
    def graph(self):
        return self.walker.graph

    @property
    def shape(self):
        """The output's concrete shape, as captured."""
        return self.node.shape

    def _raw(self, index: int, name: str | None):
        if index < len(self.node.args):
            return self.node.args[index], True
        if name is not None and name in self.node.kwargs:
            return self.node.kwargs[name], True
        return None, False

    def arg(self, index: int, default=None, name: str | None = None):
        """Literal argument ``index`` (or keyword ``name``), ``default`` when absent."""
        raw, found = self._raw(index, name)
        return raw if found else default

    def has_tensor(self, index: int, name: str | None = None) -> bool:
        """Is argument ``index`` (or keyword ``name``) another node's output?"""
        return isinstance(self._raw(index, name)[0], Ref)

    def value(self, index: int, name: str | None = None):
        """The abstract value of argument ``index`` (None for literals and absent ones)."""
        return self.resolve(self._raw(index, name)[0])

    def resolve(self, raw):
        if isinstance(raw, Ref):
            return self.walker.values.get(raw.name)
        if isinstance(raw, (list, tuple)):
            return [self.resolve(r) for r in raw if isinstance(r, Ref)]
        return None

    def tensor(self, index: int, name: str | None = None) -> tuple:
        """Argument ``index`` as a plain tensor: a tuple with one axis per dimension."""
        return self.as_tensor(self.value(index, name), f"argument {index}")

    def as_tensor(self, value, what: str = "an operand") -> tuple:
        if isinstance(value, Stacked):
            raise Unsupported("a fused (q|k|v) tensor reshaped into parts reaches this op before it is "
                              "split into its parts")
        if not isinstance(value, tuple):
            raise Unsupported(f"{what} is not a plain tensor")
        return value

    def tensors(self) -> list[tuple]:
        """Every tensor operand, in order (positional, then keyword)."""
        return [self.as_tensor(self.walker.values.get(r.name)) for r in self.node.refs()]

    def param(self, index: int) -> str | None:
        """The graph node name of argument ``index`` when it is a model parameter."""
        raw = self._raw(index, None)[0]
        return raw.name if isinstance(raw, Ref) and self.graph.node(raw.name).op == "param" else None

    def _source_chain(self, index: int) -> tuple[list, str] | None:
        """The single-input nodes from argument ``index`` back to the one model parameter it is
        computed from (nearest first), with that parameter's node name; None if there is none
        within 8 steps or some node has several inputs."""
        raw, chain = self._raw(index, None)[0], []
        for _ in range(8):
            if not isinstance(raw, Ref):
                return None
            node = self.graph.node(raw.name)
            if node.op == "param":
                return chain, node.name
            refs = node.refs()
            if len(refs) != 1:
                return None
            chain.append(node)
            raw = refs[0]
        return None

    def buffer_value(self, raw):
        """The actual tensor of a model buffer when ``raw`` (a :class:`Ref`) names one and the
        analysis knows the model's buffers; None otherwise (a parameter, a computed tensor).

        A buffer is a constant of the model (timm's precomputed RoPE table, EVA's zero k-bias),
        so a rule may read its value; a parameter's value belongs to one checkpoint."""
        if not isinstance(raw, Ref):
            return None
        node = self.graph.node(raw.name)
        return self.walker.buffer(node.name) if node.op == "param" else None

    def param_source(self, index: int) -> tuple[str, bool] | None:
        """``(param node, direct)`` when argument ``index`` is computed from one model parameter
        alone, through casts and arithmetic with numbers (``weight.float()``, ``1 + weight``);
        ``direct``: through casts only, so the operand *is* the parameter. None otherwise.

        The value of such an operand is constant whenever the parameter's is."""
        found = self._source_chain(index)
        if found is None:
            return None
        chain, param = found
        for node in chain:
            if node.op not in SOURCE_OPS or (node.op not in PASS_THROUGH and not all(
                    isinstance(a, (Ref, int, float)) for a in node.args[:2])):
                return None
        return param, all(node.op in PASS_THROUGH for node in chain)

    def gain_form(self, index: int) -> tuple[str, str] | None:
        """``(param node, form)`` when argument ``index`` is a stored gain: the parameter itself
        through casts (form ``'weight'``), or one plus it (``'one_plus'``: ``1 + weight``, the
        offset form of Gemma's RMSNorm). None for any other arithmetic.

        These are the two forms ``fold_layernorm`` knows how to fold (its ``gain`` argument)."""
        found = self._source_chain(index)
        if found is None:
            return None
        chain, param = found
        offsets = [node for node in chain if node.op not in PASS_THROUGH]
        if not offsets:
            return param, "weight"
        node = offsets[0]
        numbers = [a for a in node.args[:2] if not isinstance(a, Ref)]
        if len(offsets) == 1 and node.op == "add" and numbers == [1] and len(node.args) == 2:
            return param, "one_plus"
        return None

    # -- the semantic interface: what rules say about axes (implemented per analysis) ------
    def size(self, axis) -> int:
        """The axis's length."""
        raise NotImplementedError

    def is_unit(self, axis) -> bool:
        """Is this a size-1 axis that broadcasts (carries nothing)?"""
        raise NotImplementedError

    def new_axis(self, size: int, fixed: str | None = None, *, broadcast: str | None = None):
        """A fresh axis no operand gave; ``fixed``: why no symmetry may move it; ``broadcast``:
        it repeats a value (expand), so anything added along it is a constant shift."""
        raise NotImplementedError

    def constant_axis(self, size: int, why: str):
        """An axis of a tensor that holds one number everywhere (``zeros``, ``full``): copies, as
        :meth:`new_axis` with ``broadcast``; an analysis may also keep it from joining spaces."""
        return self.new_axis(size, broadcast=why)

    def same(self, a, b, what: str):
        """Axes ``a`` and ``b`` are the same space (a bias and the axis it is added to)."""
        raise NotImplementedError

    def combine(self, a, b, what: str):
        """Elementwise operands meet on axes ``a`` and ``b``: the same space."""
        raise NotImplementedError

    def contract(self, a, b, what: str) -> None:
        """Axis ``a`` is summed against axis ``b``: ``b`` is the dual of ``a`` (primal with dual)."""
        raise NotImplementedError

    def nonlinear(self, axis, what: str | None = None) -> None:
        """A coordinatewise nonlinear function (or product) acts along ``axis``."""
        raise NotImplementedError

    def indexes(self, axis, what: str) -> None:
        """The op's result says *which positions* of ``axis`` hold something (topk's indices, the
        ranking of the coordinates): only a symmetry that moves whole positions one to one
        (``GroupKind.permutes_positions``) keeps that meaningful. By default stated as
        :meth:`nonlinear` (a ranking of coordinates commutes only with coordinate moves); the
        checker also refuses kinds that copy or mix positions."""
        self.nonlinear(axis, what)

    def square(self, axis):
        """Coordinates along ``axis`` are squared (``x ** 2``, ``x * x``): the output's axis. Only a
        sum or mean over this axis makes the squares invariant under an isometry (a norm)."""
        raise NotImplementedError

    def gain(self, axis, gain_axis, index: int, what: str):
        """``axis`` is scaled coordinate by coordinate by operand ``index`` (a parameter, see
        :meth:`param_source`) along ``gain_axis``: a per-feature gain. The output's axis."""
        raise NotImplementedError

    def shift(self, axis, what: str | None = None) -> None:
        """A constant vector c·1 is added along ``axis``."""
        raise NotImplementedError

    def offset(self, axis, what: str) -> None:
        """A number is added to a value computed from one parameter alone (``1 + weight``): a
        shift along ``axis`` unless the value is then used as a gain that is folded away (an
        analysis that folds gains may say so); by default a :meth:`shift`."""
        self.shift(axis, what)

    def summed(self, axis) -> None:
        """``axis`` is reduced by a sum or mean (read with the ones vector)."""
        raise NotImplementedError

    def fixed(self, axis, why: str) -> None:
        """No symmetry may move ``axis`` (indexed by ids, mixed by the op, picked from);
        ``why`` names it, e.g. "token axis of attention"."""
        raise NotImplementedError

    def normalize(self, axis, *, gain: int | None, bias: int | None, centred: bool) -> None:
        """A norm over ``axis`` with gain/bias operand indices; ``centred``: subtracts the mean."""
        raise NotImplementedError

    def rotary(self, axis, layout: str, what: str, table=None) -> None:
        """A fixed map acts on ``axis`` as one complex scalar per coordinate pair of ``layout``
        (``"half"``: i with i + n/2), varying with the position: rotary position embeddings
        (``rotate_half``, a product with a cos/sin table constant on each pair). Only maps of
        the same form commute with it (``GroupKind.rotary_layout``). ``table``: the table's
        axis, when the map is a product with one; it is fixed only if it carries no site."""
        raise NotImplementedError

    def hint(self, axis, role: str) -> None:
        """Evidence of the axis's role ('qk', 'ov', 'heads'): naming and orientation, no constraint."""

    def reads(self, index: int, axis: int) -> None:
        """Parameter operand ``index``'s axis ``axis`` is read (contracted against the input)."""

    def writes(self, index: int, axis: int) -> None:
        """Parameter operand ``index``'s axis ``axis`` is written into the output."""

    def split_axis(self, axis, sizes: list[int], what: str) -> list:
        """The pieces of ``axis`` cut into consecutive ``sizes`` (split, chunk)."""
        raise NotImplementedError

    def join_axes(self, pieces: list):
        """The axis made by concatenating ``pieces`` (cat)."""
        raise NotImplementedError

    def take(self, axis, start: int, size: int, what: str):
        """Entries ``start`` to ``start + size`` of ``axis`` (slice). By default no symmetry may
        move the axis (picking entries cuts it) and the piece is a new axis; an analysis that
        knows the axis is fused may give the parts in that range instead."""
        self.fixed(axis, what)
        return self.new_axis(size, what)

    # -- the reshape algebra (see symdsl.graph.shapes.regroup) -------------------------------
    def factors(self, axis) -> list:
        """The axis's row-major factors, size-1 unbound ones dropped."""
        raise NotImplementedError

    def item_size(self, item) -> int:
        raise NotImplementedError

    def cut(self, item, outer: int, shape) -> list:
        """Factor ``item`` cut into ``(outer, size // outer)``."""
        raise NotImplementedError

    def fused_parts(self, item, count: int, wanted: bool):
        """The ``count`` parts of a fused factor when a reshape cuts it there (None: not fused)."""
        raise NotImplementedError

    def join(self, items: list):
        """The axis made of these row-major factors."""
        raise NotImplementedError


class GraphWalker:
    """Evaluate every node of ``graph`` in order with the rules of ``op_rules``.

    Subclasses say what parameters, inputs and outputs are (:meth:`param`, :meth:`leaf`,
    :meth:`output`), which :class:`OpCall` their rules get (``call_class``), and what a failed
    op is worth (:meth:`failed`). :meth:`run` returns :meth:`finish`'s result object.
    """

    call_class = OpCall

    def __init__(self, graph, op_rules: OpRules):
        self.graph, self.op_rules = graph, op_rules
        self.values: dict[str, Any] = {}

    def run(self):
        for node in self.graph.nodes:
            self.values[node.name] = self.run_node(node)
        return self.finish()

    def run_node(self, node):
        if node.op == "param":
            return self.param(node)
        if node.op in LEAF_OPS:
            return self.leaf(node)
        if node.op == "output":
            self.output(node)
            return None
        return self.call_op(node)

    def call_op(self, node):
        call = self.call_class(self, node)
        rule = self.op_rules.get(node.op)
        try:
            if rule is None:
                raise Unsupported(f"no rule for op '{node.op}'", missing=True)
            return rule(call)
        except (Unsupported,) + INTERPRET_ERRORS as exc:
            return self.failed(call, exc)

    def input_values(self, node) -> list:
        return [self.values.get(r.name) for r in node.refs()]

    # -- for subclasses -----------------------------------------------------------------------
    def buffer(self, name: str):
        """The actual tensor of the buffer behind param node ``name``, None when it is a parameter
        or the analysis was given no buffers."""
        return None

    def param(self, node):
        raise NotImplementedError

    def leaf(self, node):
        raise NotImplementedError

    def output(self, node) -> None:
        raise NotImplementedError

    def failed(self, call: OpCall, exc: Exception):
        raise exc

    def finish(self):
        return self.values
