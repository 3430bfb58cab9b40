"""Model graphs for the static checker: capture a forward pass as a normalised op list.

>>> import torch
>>> from symdsl.graph import capture
>>> g = capture(torch.nn.Linear(4, 2), {"input": torch.randn(3, 4)})
>>> [(n.op, n.shape) for n in g.nodes if n.op == "linear"]
[('linear', (3, 2))]
"""
from .capture import AUTO_ORDER, BUILTIN_BACKENDS, capture
from .capture_types import CapturedGraph, OpNode, Ref, check_graph
from .normalize import SIGNATURES, normalize_op

__all__ = [
    "AUTO_ORDER", "BUILTIN_BACKENDS", "CapturedGraph", "OpNode", "Ref", "SIGNATURES", "capture",
    "check_graph", "normalize_op",
]
