"""The matcher interface: find group elements that bring model B onto model A."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping

import torch

from ..options import PluginOptions
from ..spec.binding import ResolvedSpec

Progress = Callable[[str, int, int], None]   # (phase, done, total)


def report(progress: Progress | None, phase: str, done: int, total: int, **metrics: float) -> None:
    """Call ``progress(phase, done, total)``; pass ``metrics`` (``loss=``, ``distance=`` ...) as keywords
    only to a callback that says it takes them (an attribute ``takes_metrics = True``), so that
    a plain three-argument callback keeps working.

    >>> seen = []
    >>> report(lambda phase, done, total: seen.append((phase, done, total)), "weight matching", 1, 5, distance=0.5)
    >>> seen
    [('weight matching', 1, 5)]
    """
    if progress is None:
        return
    if metrics and getattr(progress, "takes_metrics", False):
        progress(phase, done, total, **metrics)
    else:
        progress(phase, done, total)


def renamed(progress: Progress | None, phase: str) -> Progress | None:
    """``progress`` with every phase reported as ``phase`` (metrics still passed where taken): a
    matcher run inside another (learned matching's weight-matching start) shows as its own phase.

    >>> seen = []
    >>> renamed(lambda *event: seen.append(event), "learned matching: start")("weight matching", 2, 4)
    >>> seen
    [('learned matching: start', 2, 4)]
    """
    if progress is None:
        return None
    inner = progress

    def relay(_phase: str, done: int, total: int, **metrics: float) -> None:
        report(inner, phase, done, total, **metrics)

    relay.takes_metrics = True   # type: ignore[attr-defined]
    return relay


@dataclass
class MatchResult:
    """A transform for B (site -> element; act(elements, B) is aligned to A) and how it was found."""

    elements: dict[str, torch.Tensor]
    matcher: str
    objective: list[float] = field(default_factory=list)   # per iteration, lower is better
    info: dict[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        """A JSON-serialisable summary (elements are stored separately)."""
        return {"matcher": self.matcher, "objective": self.objective, "info": self.info}


class Matcher:
    """Base class of matchers. Subclasses set ``name`` and ``description`` and implement :meth:`match`.

    ``needs_data`` is True for matchers that look at activations or losses (pass ``data=``).
    ``data_mode`` says what the pipeline then passes: ``"activations"`` gives ``model=`` (A's
    canonical model) and ``batches=`` (a list of forward keyword dicts from the train split);
    ``"dataset"`` gives ``model=`` and ``dataset=`` (the whole :class:`symdsl.data.Dataset`,
    for matchers that train on the task loss). Data-driven matchers also get ``registries=``
    (the run's :class:`symdsl.registry.Registries`: op rules and capture backends for matchers
    that trace the model); a direct caller may leave it out.

    ``Options`` declares the user's options (the ``**options`` of :meth:`match`) as a
    :class:`symdsl.options.PluginOptions` model: types, ranges, defaults. The API and the command
    line check them with it before any model is loaded, and ``symdsl plugins`` lists them; the
    matcher reads its settings through ``self.Options.parse(options, ...)``. A matcher that leaves
    ``Options`` at None gets whatever options the caller gives, unchecked.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    needs_data: ClassVar[bool] = False
    data_mode: ClassVar[str] = "activations"
    Options: ClassVar[type[PluginOptions] | None] = None

    def match(self, resolved: ResolvedSpec, state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor],
              *, seed: int = 0, progress: Progress | None = None, **options) -> MatchResult:  # pragma: no cover
        raise NotImplementedError
