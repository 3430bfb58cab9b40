"""Where an output's inputs came from: what its model card names, which folder its tokenizer comes from.

:func:`symdsl.load_model` marks each model with the REF it was given (``symdsl_ref``: a path, a
Hub id, ``timm:NAME`` ...) and, when the REF is a folder (local or a Hub snapshot), that folder
(``symdsl_source``). An :class:`Origin` gathers them for one output; models built in Python
carry neither, and their outputs then have no ``base_model`` and no companion files.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

HALF = (torch.float16, torch.bfloat16)


def storage_dtype(model: torch.nn.Module) -> torch.dtype | None:
    """The dtype of ``model``'s floating parameters (the first one's), or None without any.

    >>> storage_dtype(torch.nn.Linear(2, 2).half())
    torch.float16
    """
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), None)


@dataclass(frozen=True)
class Origin:
    """The inputs of one output.

    ``refs``: every input's REF as given (None for a model built in Python); ``layout``: the
    index of the input whose checkpoint layout the output keeps (B for an alignment, the first
    model for a merge); ``folders``: each input's folder (None when it has none); ``dtypes``: each
    input's storage dtype as loaded, before any upcast for computation.
    """

    refs: tuple[str | None, ...] = ()
    folders: tuple[str | None, ...] = ()
    dtypes: tuple[torch.dtype | None, ...] = ()
    layout: int = 0

    @property
    def base_models(self) -> list[str]:
        """The REFs a model card lists as ``base_model`` (inputs built in Python are left out)."""
        return [ref for ref in self.refs if ref]

    @property
    def companion_folder(self) -> str | None:
        """The folder whose tokenizer and other companion files the output carries."""
        return self.folders[self.layout] if self.layout < len(self.folders) else None

    @property
    def dtype(self) -> torch.dtype | None:
        """The dtype ``dtype='auto'`` writes: the layout input's own."""
        return self.dtypes[self.layout] if self.layout < len(self.dtypes) else None

    @property
    def sources(self) -> list[str]:
        """The inputs' folders: an output may not be written into (or over) any of them."""
        return [folder for folder in self.folders if folder]


def origin_of(models: Sequence[torch.nn.Module], layout: int = 0) -> Origin:
    """The :class:`Origin` of an output made from ``models``, keeping ``models[layout]``'s layout.

    >>> net = torch.nn.Linear(2, 2); net.symdsl_ref, net.symdsl_source = "org/a", "/cache/org-a"
    >>> origin = origin_of([net, torch.nn.Linear(2, 2)], layout=0)
    >>> origin.base_models, origin.companion_folder, origin.dtype
    (['org/a'], '/cache/org-a', torch.float32)
    """
    def text(model, name):
        value = getattr(model, name, None)
        return value if isinstance(value, str) else None
    return Origin(tuple(text(m, "symdsl_ref") for m in models), tuple(text(m, "symdsl_source") for m in models),
                  tuple(storage_dtype(m) for m in models), layout)
