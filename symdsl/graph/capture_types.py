"""The captured-graph data model every backend produces and the static checker consumes.

A graph is a flat, topologically ordered list of :class:`OpNode`. Values flow by name: an
argument that is another node's output is a :class:`Ref`. Parameters, buffers and user
inputs are nodes too (ops ``param`` and ``input``), so the checker never needs to know which
backend produced the graph.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Ref:
    """A reference, inside a node's ``args`` or ``kwargs``, to another node's value.

    >>> Ref("linear_1")
    %linear_1
    """

    name: str

    def __repr__(self) -> str:
        return f"%{self.name}"


def iter_refs(value: Any, path: str = "") -> Iterator[tuple[str, Ref]]:
    """Yield ``(position, ref)`` for every :class:`Ref` nested in ``value`` (lists, tuples, dicts).

    The position says where the ref sits, e.g. ``"0"``, ``"0[1]"`` or ``"attn_mask"``.

    >>> list(iter_refs(([Ref("a"), Ref("b")], 1)))
    [('0[0]', %a), ('0[1]', %b)]
    """
    if isinstance(value, Ref):
        yield path, value
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from iter_refs(item, f"{path}[{i}]" if path else str(i))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from iter_refs(item, f"{path}[{key!r}]" if path else str(key))


@dataclass
class OpNode:
    """One operation of a captured graph, in canonical form (see ``symdsl.graph.normalize``).

    >>> OpNode("relu", "relu", (Ref("x"),), {}, "aten.relu.default", (2, 3), torch.float32)
    OpNode(relu = relu(%x) : (2, 3))
    """

    name: str
    op: str
    args: tuple
    kwargs: dict
    target: str
    shape: Shape | tuple[Shape, ...] | None = None
    dtype: torch.dtype | None = None
    source: str | None = None
    code: str | None = None
    module: str | None = None

    def refs(self) -> list[Ref]:
        """Every :class:`Ref` in ``args`` then ``kwargs``, in order, repeats included."""
        return [ref for _, ref in self.ref_positions()]

    def ref_positions(self) -> list[tuple[str, Ref]]:
        """``(position, ref)`` pairs: positions are ``"0"``, ``"0[1]"`` for args, names for kwargs."""
        return list(iter_refs(self.args)) + list(iter_refs(self.kwargs))

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"OpNode({self.name} = {self.op}({', '.join(parts)}) : {self.shape})"


@dataclass
class CapturedGraph:
    """A model's forward pass as a normalised op list.

    ``params`` maps each ``param`` node to every state-dict name of that tensor (tied weights
    are one node with several names). ``inputs``/``outputs`` name the user input nodes and the
    nodes whose tensors the model returns.

    >>> g = CapturedGraph("demo", [OpNode("x", "input", (), {}, "x", (2,)),
    ...                            OpNode("neg", "neg", (Ref("x"),), {}, "neg", (2,)),
    ...                            OpNode("output", "output", (Ref("neg"),), {}, "output")],
    ...                   params={}, inputs=["x"], outputs=["neg"])
    >>> [n.name for n in g.users("x")]
    ['neg']
    """

    backend: str
    nodes: list[OpNode]
    params: dict[str, list[str]]
    inputs: list[str]
    outputs: list[str]
    # Lookup tables, rebuilt whenever the node list changes length (see _indexes).
    _by_name: dict[str, OpNode] = field(default_factory=dict, init=False, repr=False, compare=False)
    _users: dict[str, list[OpNode]] = field(default_factory=dict, init=False, repr=False, compare=False)
    _indexed_len: int = field(default=-1, init=False, repr=False, compare=False)

    def reindex(self) -> None:
        """Rebuild the name and user tables; call after editing nodes' ``args`` in place."""
        self._by_name = {n.name: n for n in self.nodes}
        self._users = {n.name: [] for n in self.nodes}
        for node in self.nodes:
            seen: set[str] = set()
            for ref in node.refs():
                if ref.name not in seen and ref.name in self._users:
                    seen.add(ref.name)
                    self._users[ref.name].append(node)
        self._indexed_len = len(self.nodes)

    def _indexes(self) -> None:
        if self._indexed_len != len(self.nodes):
            self.reindex()

    def node(self, name: str) -> OpNode:
        """The node called ``name``; ``KeyError`` if there is none."""
        self._indexes()
        if name not in self._by_name:
            self.reindex()  # the list may have been edited without changing its length
        return self._by_name[name]

    def users(self, name: str) -> list[OpNode]:
        """The nodes that read ``name``'s value, in graph order, each once."""
        self.node(name)
        return list(self._users[name])

    def ops(self) -> list[str]:
        """The canonical op of every node, in order (handy for counting)."""
        return [n.op for n in self.nodes]

    def to_networkx(self):
        """A ``networkx.DiGraph``: nodes keyed by name with the OpNode fields as attributes,
        one edge producer -> consumer per referenced value (attribute ``positions`` lists
        where the consumer reads it).

        >>> g = CapturedGraph("demo", [OpNode("x", "input", (), {}, "x", (2,)),
        ...                            OpNode("output", "output", (Ref("x"),), {}, "output")],
        ...                   params={}, inputs=["x"], outputs=["x"])
        >>> list(g.to_networkx().edges)
        [('x', 'output')]
        """
        import networkx as nx

        graph = nx.DiGraph()
        graph.graph["backend"] = self.backend  # not a constructor kwarg: networkx reads that as its own dispatch
        for node in self.nodes:
            graph.add_node(node.name, op=node.op, args=node.args, kwargs=node.kwargs, target=node.target,
                           shape=node.shape, dtype=node.dtype, source=node.source, code=node.code,
                           module=node.module, aliases=self.params.get(node.name))
        for node in self.nodes:
            for position, ref in node.ref_positions():
                if graph.has_edge(ref.name, node.name):
                    graph.edges[ref.name, node.name]["positions"].append(position)
                else:
                    graph.add_edge(ref.name, node.name, positions=[position])
        return graph

    def __str__(self) -> str:
        lines = [f"graph captured by {self.backend} ({len(self.nodes)} nodes)"]
        for node in self.nodes:
            parts = [repr(a) for a in node.args] + [f"{k}={v!r}" for k, v in node.kwargs.items()]
            where = f"  # {node.module}" if node.module else ""
            lines.append(f"  %{node.name} = {node.op}({', '.join(parts)}) : {node.shape}{where}")
        return "\n".join(lines)


def check_graph(graph: CapturedGraph) -> list[str]:
    """Problems with a graph's structure (empty when it is well formed).

    Checks: unique names, every Ref names an earlier node, params/inputs/outputs name
    existing nodes of the right op.
    """
    problems: list[str] = []
    seen: dict[str, OpNode] = {}
    for node in graph.nodes:
        if node.name in seen:
            problems.append(f"node name '{node.name}' is used twice")
        for ref in node.refs():
            if ref.name not in seen:
                problems.append(f"node '{node.name}' reads '{ref.name}', which is not defined before it")
        seen[node.name] = node
    for name in graph.params:
        if name not in seen or seen[name].op != "param":
            problems.append(f"params names '{name}', which is not a param node")
    for name in graph.inputs:
        if name not in seen or seen[name].op != "input":
            problems.append(f"inputs names '{name}', which is not an input node")
    for name in graph.outputs:
        if name not in seen:
            problems.append(f"outputs names '{name}', which is not a node")
    return problems
