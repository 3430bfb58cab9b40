"""What :func:`symdsl.align` returns: B aligned to A, as a model of B's class, and how it was found."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..evaluate import interpolate
from ..match import MatchResult
from ..models import save_model
from ..spec import ResolvedSpec
from ..spec.load import Spec
from ..spec.coverage import detect_ties
from .pipeline import Prepared


@dataclass
class Alignment:
    """B aligned to A.

    ``model`` is a model of B's class computing B's function, with its weights moved into A's
    frame. Symmetries such as a rotation of the residual stream need symdsl's canonical form
    (LayerNorm gains folded into the readers, tied embeddings untied), so ``model`` carries that
    form; ``notes`` says what differs from B's own parametrisation, and ties that the aligned
    weights still satisfy are restored. ``transform`` maps each site to its group element
    (``act(transform, B) ~ A``), ``result`` is the matcher's full result, ``prepared`` the
    canonical copies of A and B that the matcher saw (``prepared.states[0]`` is A's).
    """

    prepared: Prepared
    result: MatchResult
    aligned_b: dict[str, torch.Tensor]
    info: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    _model: torch.nn.Module | None = field(default=None, repr=False)

    @property
    def spec(self) -> Spec:
        return self.prepared.spec

    @property
    def resolved(self) -> ResolvedSpec:
        return self.prepared.resolved

    @property
    def transform(self) -> dict[str, torch.Tensor]:
        """Site name -> group element that brings B onto A."""
        return self.result.elements

    @property
    def model(self) -> torch.nn.Module:
        """B aligned, as a model of B's class (built once, on first use)."""
        if self._model is None:
            model = self.prepared.models[1]
            model.load_state_dict(self.aligned_b)
            self._model = retie(model, self.notes)
        return self._model

    def interpolate(self, lam: float) -> torch.nn.Module:
        """The model ``lam * A + (1 - lam) * aligned B`` (``lam = 1`` is A, as on the barrier's path)."""
        template = copy.deepcopy(self.prepared.models[0])
        template.load_state_dict(interpolate(self.prepared.states[0], self.aligned_b, lam))
        return template

    def record(self) -> dict[str, Any]:
        """A JSON-serialisable summary: spec, matcher result, notes, extra information."""
        return {"spec": self.spec.name, **self.result.to_record(), "notes": list(self.notes), **self.info}

    def save(self, folder: str | Path, provenance: dict[str, Any] | None = None) -> Path:
        """Write ``model`` as a standard checkpoint, ``transform.safetensors`` and ``symdsl.json``."""
        from safetensors.torch import save_file

        folder = save_model(self.model.cpu(), folder, {**self.record(), **(provenance or {})})
        elements = {k: v.detach().contiguous().cpu() for k, v in self.transform.items()}
        save_file(elements, str(folder / "transform.safetensors"))
        return folder


def retie(model: torch.nn.Module, notes: list[str]) -> torch.nn.Module:
    """Tie a transformers model's input and output embeddings again if the aligned weights are equal.

    Canonicalization unties them (folding the final norm's gain into the output embedding and
    centring the input embedding make them differ); when they come out equal after all, the tie
    is restored, otherwise ``notes`` says why the model stays untied.
    """
    config = getattr(model, "config", None)
    get_in, get_out = getattr(model, "get_input_embeddings", None), getattr(model, "get_output_embeddings", None)
    if config is None or get_in is None or get_out is None or getattr(config, "tie_word_embeddings", True):
        return model
    source, target = get_in(), get_out()
    if source is None or target is None or getattr(source, "weight", None) is None:
        return model
    if source.weight.shape == target.weight.shape and torch.equal(source.weight, target.weight):
        target.weight = source.weight
        config.tie_word_embeddings = True
        notes.append("input and output embeddings tied again (the aligned weights are equal)")
    else:
        notes.append("input and output embeddings are untied: the symmetry acts on them differently "
                     "(the final norm's gain is folded into the output embedding and the input embedding is "
                     "centred), so the saved config has tie_word_embeddings=false")
    return model


def tied_groups(model: torch.nn.Module) -> list[list[str]]:
    """Names of parameters that share storage (for tests and notes)."""
    return detect_ties(model.state_dict(keep_vars=True))
