"""The model-loader interface plugins implement (hook ``symdsl_model_loaders``)."""
from __future__ import annotations

from typing import ClassVar

import torch


class ModelLoader:
    """Turns REF strings of one form into models, e.g. ``mystore:run-42``.

    ``can_load(ref)`` says whether this loader understands the REF; ``load(ref, checkpoint)``
    builds the model (in eval mode). Plugin loaders are asked before the built-in forms.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    # module prefixes whose nn.Module classes a symdsl_model.json may name without --trust-code
    record_modules: ClassVar[tuple[str, ...]] = ()

    def can_load(self, ref: str) -> bool:  # pragma: no cover - interface
        raise NotImplementedError

    def load(self, ref: str, checkpoint: str | None = None) -> torch.nn.Module:  # pragma: no cover - interface
        raise NotImplementedError
