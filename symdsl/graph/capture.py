"""Graph capture for the static checker: one entry point, pluggable backends.

``capture(model, inputs)`` tries ``torch.export`` and falls back to ``torch.fx``; both hand
back the same normalised :class:`~symdsl.graph.capture_types.CapturedGraph`. A backend is any
``fn(model, inputs) -> CapturedGraph``; plugins contribute more through the
``symdsl_capture_backends`` hook, and callers pass them in as ``backends=``.
"""
from __future__ import annotations

import logging
from types import MappingProxyType
from typing import Any, Callable, Mapping

import torch

from ..errors import SymdslError, UsageError, suggest
from .capture_common import without_kv_cache
from .capture_export import capture_export
from .capture_fx import capture_fx
from .capture_types import CapturedGraph, OpNode, Ref, check_graph

# The output contract lives in capture_types; it is re-exported here so that checker code can
# take everything it needs from this one module.
__all__ = ["AUTO_ORDER", "BUILTIN_BACKENDS", "CapturedGraph", "OpNode", "Ref", "capture", "check_graph"]

log = logging.getLogger(__name__)

CaptureBackend = Callable[[torch.nn.Module, Any], CapturedGraph]
# the backends symdsl itself implements; the built-in plugin contributes them under these names
BUILTIN_BACKENDS: Mapping[str, CaptureBackend] = MappingProxyType({"export": capture_export, "fx": capture_fx})
AUTO_ORDER = ("export", "fx")  # export first: ATen ops are closer to what actually runs

HINT = ("hint: pass inputs that match forward()'s arguments; remove data-dependent Python control "
        "flow from forward(); or register a backend that can trace this model with "
        "a plugin (hook symdsl_capture_backends)")


def _one_line(exc: BaseException) -> str:
    """``"TypeName: first line of the message"``, short: tracing errors can be pages long."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[0] if lines else '(no message)'}"
    return text if len(text) <= 240 else text[:237] + "..."


def _run(backend: CaptureBackend, model: torch.nn.Module, inputs: Any) -> CapturedGraph:
    graph = backend(model, inputs)
    if not isinstance(graph, CapturedGraph):
        raise TypeError(f"backend returned {type(graph).__name__}, not a CapturedGraph")
    problems = check_graph(graph)
    if problems:
        raise ValueError(f"backend returned a malformed graph: {problems[0]}"
                         + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    return graph


def capture(model: torch.nn.Module, inputs: Any = None, backend: str = "auto",
            backends: Mapping[str, CaptureBackend] = BUILTIN_BACKENDS) -> CapturedGraph:
    """Capture ``model``'s forward pass on example ``inputs`` as a normalised op list.

    ``inputs``: a dict of keyword arguments (``{"input_ids": ids}``), a tuple of positional
    ones, or a single tensor. ``backend``: ``"auto"`` (export, then fx), or a name in
    ``backends`` (``registries.capture_backends`` adds the plugins' ones to the built-ins).
    The model runs in whatever train/eval mode it is in; a transformers model's
    ``config.use_cache`` is off during capture and restored afterwards.

    >>> g = capture(torch.nn.Linear(4, 2), torch.randn(3, 4))
    >>> g.backend, [n.op for n in g.nodes]
    ('export', ['param', 'param', 'input', 'linear', 'output'])
    """
    if backend == "auto":   # export, then fx, then any other backend given
        names = [n for n in AUTO_ORDER if n in backends] + [n for n in backends if n not in AUTO_ORDER]
        if not names:
            raise UsageError("no capture backend is available (were the built-in plugins blocked?)")
    elif backend in backends:
        names = [backend]
    else:
        known = ["auto", *backends]
        raise UsageError(f"unknown capture backend '{backend}'{suggest(backend, known)} "
                         f"(known: {', '.join(known)})")

    failures: list[tuple[str, str]] = []
    with without_kv_cache(model):
        for name in names:
            try:
                graph = _run(backends[name], model, inputs)
            except Exception as exc:  # any failure of one backend is a reason to try the next
                failures.append((name, _one_line(exc)))
                log.info("capture backend %s failed on %s: %s", name, type(model).__name__, failures[-1][1])
                continue
            if failures:
                log.info("captured %s with %s after: %s", type(model).__name__, name,
                         "; ".join(f"{n}: {r}" for n, r in failures))
            return graph
    reasons = "\n".join(f"  {name}: {reason}" for name, reason in failures)
    tried = f"backend '{names[0]}' failed" if len(names) == 1 else "every backend failed"
    raise SymdslError(f"could not capture a graph of {type(model).__name__}: {tried}:\n{reasons}\n  {HINT}")

