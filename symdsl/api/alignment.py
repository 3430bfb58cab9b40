"""What :func:`symdsl.align` returns: B aligned to A, as a model of B's class, and how it was found."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..canon import RestoreContext, restore
from ..evaluate.interpolate import interpolate
from ..match import MatchResult
from ..models.origin import Origin
from ..models.output import hide_records, staged_output
from ..models.save import output_dtype, write_extras, write_model, write_provenance
from ..models.shards import read_layout
from ..spec import ResolvedSpec
from ..spec.load import Spec
from .output_frame import OutputFrame
from .pipeline import Prepared
from .transform_file import TRANSFORM_FILE, state_digest, transform_metadata


@dataclass
class Alignment:
    """B aligned to A.

    ``model`` is a model of B's class computing B's function, with its weights moved into A's
    frame, in B's own parametrisation wherever the transform allows: each canonicalize step is
    undone (:meth:`symdsl.canon.Canonicalizer.restore`) when the transform commutes with it, e.g.
    a permutation of the residual stream lets folded LayerNorm gains and tied embeddings come
    back. A rotation does not, and then ``model`` keeps symdsl's canonical form (gains folded
    into the readers, embeddings untied, ``tie_word_embeddings=False`` in its config): still a
    standard checkpoint with B's function. ``notes`` says what differs from B. ``transform`` maps each site to its group element
    (``act(transform, B) ~ A``), ``result`` is the matcher's full result, ``prepared`` the
    canonical copies of A and B that the matcher saw (``prepared.states[0]`` is A's).
    """

    prepared: Prepared
    result: MatchResult
    aligned_b: dict[str, torch.Tensor]
    info: dict[str, Any] = field(default_factory=dict)
    _notes: list[str] = field(default_factory=list)
    # B as given (None after a width lift), or only what restoring B's form reads when B was
    # canonicalized and moved in place (name -> tensor; symdsl.align(canonicalize_b_in_place=True))
    original_b: torch.nn.Module | dict[str, torch.Tensor] | None = field(default=None, repr=False)
    _model: torch.nn.Module | None = field(default=None, repr=False)
    origin: Origin = field(default_factory=Origin)   # the inputs: card's base models, B's tokenizer, B's dtype
    # A's and B's canonical digests when prepared.states does not hold them (symdsl apply: no A)
    a_digest: str | None = None
    b_digest: str | None = None
    # the elements acting on the declared outputs B returns (None: not computed, e.g. after a width lift)
    output_frame: OutputFrame | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.output_frame is not None:
            self._notes.extend(self.output_frame.notes())
            self.info["output_frame"] = self.output_frame.record()

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
    def notes(self) -> list[str]:
        """Where ``model`` differs from B's own parametrisation, and why (one line each)."""
        self.model                  # building the model is what finds them
        return list(self._notes)

    @property
    def model(self) -> torch.nn.Module:
        """B aligned, as a model of B's class (built once, on first use)."""
        if self._model is None:
            model = self.prepared.models[1]
            if self.b_digest is None and _aliases(self.prepared.states[1], model):
                # the states are the model's own tensors (prepare(keep_dtype=True)): loading moves
                # states[1] too, so the canonical digests the transform file records are taken first
                self.a_digest, self.b_digest = (state_digest(s) for s in self.prepared.states[:2])
            if not _holds(self.aligned_b, model):       # moved in place: aligned_b is the model's own tensors
                model.load_state_dict(self.aligned_b)
            if self.original_b is not None:
                context = RestoreContext(self.original_b, self.result.elements, self.resolved)
                self._notes.extend(restore(model, self.resolved, context))
            self._model = model
        return self._model

    def interpolate(self, lam: float) -> torch.nn.Module:
        """The model ``lam * A + (1 - lam) * aligned B`` (``lam = 1`` is A, as on the barrier's path)."""
        template = copy.deepcopy(self.prepared.models[0])
        template.load_state_dict(interpolate(self.prepared.states[0], self.aligned_b, lam))
        return template

    def record(self) -> dict[str, Any]:
        """A JSON-serialisable summary: spec, matcher result, notes, extra information."""
        return {"spec": self.spec.name, **self.result.to_record(), "notes": self.notes, **self.info}

    def transform_metadata(self, elements: dict[str, torch.Tensor]) -> dict[str, str]:
        """What ``transform.safetensors`` fits: spec, sites' kinds and shapes, A's and B's digests
        (:mod:`symdsl.api.transform_file`)."""
        states = self.prepared.states
        kinds = {name: site.kind.name for name, site in self.resolved.sites.items()}
        a = self.a_digest or (state_digest(states[0]) if self.b_digest is None and states else None)
        b = self.b_digest or (state_digest(states[1]) if len(states) > 1 else None)
        return transform_metadata(self.spec.name, elements, kinds, a, b)

    def save(self, folder: str | Path, provenance: dict[str, Any] | None = None, *, overwrite: bool = False,
             dtype: str = "auto") -> Path:
        """Write ``model`` as a standard checkpoint, ``transform.safetensors`` (and
        ``output_transform.safetensors`` when B's declared outputs come out moved), B's companion files
        (tokenizer, chat template, generation and preprocessor configs: :mod:`symdsl.models.companions`),
        a model card (``README.md``) and ``symdsl.json``.

        ``dtype``: ``auto`` writes B's own dtype (a float16 B, matched in float32, is written in
        float16), or ``float32``, ``bfloat16``, ``float16``; the transform stays in its own precision.
        Atomic (:func:`symdsl.models.output.staged_output`): written beside ``folder`` and moved
        into place at the end, ``symdsl.json`` last; an existing non-empty ``folder`` is refused
        unless ``overwrite``, and one that is or holds an input always.
        """
        from safetensors.torch import save_file

        cast = output_dtype(dtype, self.origin)
        record = {**self.record(), **(provenance or {})}
        with staged_output(folder, overwrite=overwrite, inputs=self.origin.sources) as stage:
            shard_notes = write_model(self.model.cpu(), stage, cast, read_layout(self.origin.companion_folder))
            self._notes.extend(note for note in shard_notes if note not in self._notes)
            record["notes"] = self.notes
            hide_records(stage)
            elements = {k: v.detach().contiguous().cpu() for k, v in self.transform.items()}
            save_file(elements, str(stage / TRANSFORM_FILE), metadata=self.transform_metadata(elements))
            if self.output_frame is not None and self.output_frame.moved:
                self.output_frame.save(stage)        # B's features come out moved: how to undo it
            record.update(write_extras(stage, "align", self.model, record, self.origin, cast))
            write_provenance(stage, record)
        return Path(folder)


def _aliases(state: dict[str, torch.Tensor], model: torch.nn.Module) -> bool:
    """Does ``state`` hold ``model``'s own tensors (not copies)?"""
    live = model.state_dict()
    return any(k in live and v.data_ptr() == live[k].data_ptr() for k, v in state.items() if v.numel())


def _holds(state: dict[str, torch.Tensor], model: torch.nn.Module) -> bool:
    """Is every tensor of ``model``'s state dict the very tensor ``state`` has under its name?"""
    live = model.state_dict()
    return live.keys() == state.keys() and all(
        v.data_ptr() == state[k].data_ptr() and v.shape == state[k].shape for k, v in live.items())
