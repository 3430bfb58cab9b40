"""The merger interface: combine the state dicts of aligned models."""
from __future__ import annotations

from typing import ClassVar, Mapping, Sequence

import torch

from ..options import PluginOptions


class Merger:
    """Base class of mergers. Subclasses set ``name``/``description`` and implement :meth:`merge`.

    ``Options`` declares :meth:`merge`'s ``**options`` as for matchers (:class:`symdsl.match.Matcher`);
    None passes them through unchecked.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    Options: ClassVar[type[PluginOptions] | None] = None

    def merge(self, states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float] | None = None,
              **options) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError
