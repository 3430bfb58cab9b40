"""The merger interface: combine the state dicts of aligned models."""
from __future__ import annotations

from typing import ClassVar, Mapping, Sequence

import torch


class Merger:
    """Base class of mergers. Subclasses set ``name``/``description`` and implement :meth:`merge`."""

    name: ClassVar[str]
    description: ClassVar[str] = ""

    def merge(self, states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float] | None = None,
              **options) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError
