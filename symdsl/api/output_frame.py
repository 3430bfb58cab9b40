"""The output frame of feature models: which of B's returned features an alignment moves, and back.

A model whose outputs are features (a backbone, an encoder without a head) declares them
equivariant in its spec's ``outputs`` (``last_hidden_state: "_ _ resid"``): moving the weights
by ``g`` moves those outputs by ``g`` too, ``aligned(x) = act(g, B(x))``. So the aligned model
computes B's features *in A's frame*, not B's features: it is not a drop-in replacement for B.
This module

- finds the declared outputs a model actually returns (a masked-LM model returns logits, not the
  ``last_hidden_state`` its spec also declares for the bare encoder): :func:`returned_outputs`;
- holds the elements acting on them (:class:`OutputFrame`), says which moved (its ``notes``),
  writes them as ``output_transform.safetensors`` with each output's axis layout, reads them
  back, and maps aligned outputs back to B's frame with the group inverses
  (:func:`undo_output_frame`);
- keeps B's frame instead: :func:`hold_sites` hands the matcher a spec where the sites acting on
  the outputs (and the sites declared ``per`` them) are left out, so every matcher leaves them at
  the identity (``symdsl.align(..., keep_output_frame=True)``); :func:`with_identities` puts the
  identity elements back into the result.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from ..act import act_tensor
from ..errors import UsageError
from ..models.build import make_inputs, select_outputs
from ..plugins import default_registries
from ..registry import Registries
from ..spec import ResolvedSpec
from ..spec.binding import BoundAxis, BoundFactor, SiteDef, TensorBinding
from ..spec.config import model_config
from ..spec.load import Spec
from .transform_file import read_elements_file

OUTPUT_TRANSFORM_FILE = "output_transform.safetensors"
FORMAT = "symdsl-output-transform"


def returned_outputs(spec: Spec, resolved: ResolvedSpec, model: torch.nn.Module) -> list[str]:
    """The spec's declared (equivariant) outputs that ``model`` returns, in declaration order.

    Found by running ``model`` once on the spec's example inputs. When it cannot be run (no
    example inputs, a shape it rejects) every declared output is taken as returned: a note too
    many rather than a moved output nobody is told about.

    >>> import symdsl, transformers
    >>> from symdsl.plugins import load
    >>> from symdsl.spec import resolve
    >>> spec = symdsl.find_spec("hf-bert")
    >>> config = transformers.BertConfig(**spec.document.example.config)
    >>> [returned_outputs(spec, resolve(spec, m, registries=load()), m)
    ...  for m in (transformers.BertModel(config).eval(), transformers.BertForMaskedLM(config).eval())]
    [['last_hidden_state', 'pooler_output'], []]
    """
    declared = list(resolved.outputs)
    if not declared:
        return []
    try:
        parameter = next(model.parameters())
        inputs = make_inputs(spec, {**model_config(model), **resolved.dims}, dtype=parameter.dtype,
                             device=parameter.device)
        with torch.no_grad():
            found = select_outputs(model(**inputs), None, declared)
    except Exception:        # noqa: BLE001 - any failure to run means "cannot tell": claim them all
        return declared
    return [name for name in declared if name in found]


def output_sites(resolved: ResolvedSpec, outputs: Iterable[str]) -> list[str]:
    """The sites acting on any of ``outputs``, in the spec's site order.

    >>> import symdsl, transformers
    >>> from symdsl.plugins import load
    >>> from symdsl.spec import resolve
    >>> spec = symdsl.find_spec("hf-bert")
    >>> model = transformers.BertModel(transformers.BertConfig(**spec.document.example.config))
    >>> output_sites(resolve(spec, model, registries=load()), ["last_hidden_state", "pooler_output"])
    ['resid', 'pool']
    """
    acting = set().union(*(resolved.outputs[name].sites() for name in outputs))
    return [name for name in resolved.sites if name in acting]


def held_sites(resolved: ResolvedSpec, sites: Iterable[str]) -> list[str]:
    """``sites`` and every site declared ``per`` one of them (directly or further down): a per-index
    map is matched together with its parent, so holding the parent holds its children too."""
    held = set(sites)
    grown = True
    while grown:
        children = {s.name for s in resolved.sites.values() if s.per in held} - held
        grown = bool(children)
        held |= children
    return [name for name in resolved.sites if name in held]


def _unbind(binding: TensorBinding, held: set[str]) -> TensorBinding:
    """``binding`` with every factor bound to a held site turned into a plain unbound axis factor."""
    def factor(f: BoundFactor) -> BoundFactor:
        return BoundFactor(f.size) if f.site in held else f

    axes = tuple(BoundAxis(tuple(tuple(factor(f) for f in part) for part in axis.parts), axis.nest)
                 for axis in binding.axes)
    return dataclasses.replace(binding, axes=axes)


def hold_sites(resolved: ResolvedSpec, held: Iterable[str]) -> ResolvedSpec:
    """A copy of ``resolved`` without the ``held`` sites: every matcher sees only the others and leaves
    the held ones out of its result (fill them in with :func:`with_identities`). Tensors bound to
    nothing else become invariant. ``resolved`` itself (shared by the resolve cache) is not changed.

    >>> import symdsl, transformers
    >>> from symdsl.plugins import load
    >>> from symdsl.spec import resolve
    >>> spec = symdsl.find_spec("hf-bert")
    >>> model = transformers.BertModel(transformers.BertConfig(**spec.document.example.config))
    >>> held = hold_sites(resolve(spec, model, registries=load()), ["resid", "pool"])
    >>> "resid" in held.sites, held.tensors["encoder.layer.0.intermediate.dense.weight"].sites()
    (False, {'mlp.0'})
    >>> "embeddings.LayerNorm.weight" in held.invariant
    True
    """
    held = set(held)
    if not held:
        return resolved
    unknown = sorted(held - set(resolved.sites))
    if unknown:
        raise UsageError(f"cannot hold site(s) {unknown} at the identity: spec '{resolved.spec.name}' has no such "
                         f"site (its sites: {', '.join(list(resolved.sites)[:8])} ...)")
    tensors, invariant = {}, set(resolved.invariant)
    for name, binding in resolved.tensors.items():
        if not binding.sites() & held:
            tensors[name] = binding
            continue
        unbound = _unbind(binding, held)
        if unbound.sites():
            tensors[name] = unbound
        else:
            invariant.add(name)          # e.g. a LayerNorm gain bound to the held residual site only
    outputs = {name: _unbind(binding, held) for name, binding in resolved.outputs.items()}
    sites = {name: site for name, site in resolved.sites.items() if name not in held}
    return dataclasses.replace(resolved, sites=sites, tensors=tensors, invariant=invariant, outputs=outputs)


def identity_of(site: SiteDef, like: torch.Tensor | None = None) -> torch.Tensor:
    """The identity element of ``site`` (on ``like``'s device when given)."""
    return site.kind.identity(site.size, site.size_in, site.batch, options=site.options,
                              device=None if like is None else like.device)


def with_identities(elements: Mapping[str, torch.Tensor], resolved: ResolvedSpec,
                    held: Iterable[str]) -> dict[str, torch.Tensor]:
    """``elements`` with the identity element of every ``held`` site added."""
    out = dict(elements)
    like = next(iter(elements.values()), None)           # the matcher's device
    for name in held:
        out[name] = identity_of(resolved.sites[name], like)
    return out


def is_identity(site: SiteDef, element: torch.Tensor) -> bool:
    """Is ``element`` exactly the identity of ``site`` (a matched element near it counts as moved)?"""
    identity = identity_of(site, element)
    return identity.shape == element.shape and torch.equal(identity.to(element.dtype), element)


def _axes_text(binding: TensorBinding, sites: Mapping[str, SiteDef], moved: set[str]) -> str:
    """``its axis 2 (site 'resid', permutation)``: where the moved sites act on one output."""
    parts = []
    for index, axis in enumerate(binding.axes):
        names = [f.site for part in axis.parts for f in part if f.site in moved]
        if names:
            named = ", ".join(f"site '{s}', {sites[s].kind.name}" for s in dict.fromkeys(names))
            parts.append(f"axis {index} ({named})")
    return "its " + " and ".join(parts)


def _binding_record(binding: TensorBinding) -> dict[str, Any]:
    return {"pattern": binding.pattern,
            "axes": [{"parts": [[{"size": f.size, "site": f.site, "dual": f.dual, "dim": f.dim} for f in part]
                                for part in axis.parts], "nest": [list(n) for n in axis.nest]}
                     for axis in binding.axes]}


def _binding_from(name: str, record: Mapping[str, Any]) -> TensorBinding:
    axes = tuple(BoundAxis(tuple(tuple(BoundFactor(int(f["size"]), f.get("site"), bool(f.get("dual")), f.get("dim"))
                                       for f in part) for part in axis["parts"]),
                           tuple(tuple(n) for n in axis.get("nest", ())))
                 for axis in record["axes"])
    return TensorBinding(name, axes, record.get("pattern", ""))


@dataclass
class OutputFrame:
    """The elements that act on the declared outputs a model returns (B's frame -> A's frame).

    ``outputs``: each returned declared output's binding (its axis layout); ``sites``: the sites
    acting on them; ``elements``: those sites' elements, as in the alignment's transform;
    ``held``: the sites kept at the identity on purpose (``keep_output_frame``).
    """

    spec: str
    outputs: dict[str, TensorBinding]
    sites: dict[str, SiteDef]
    elements: dict[str, torch.Tensor]
    held: list[str] = dataclasses.field(default_factory=list)

    @classmethod
    def of(cls, resolved: ResolvedSpec, outputs: Iterable[str], elements: Mapping[str, torch.Tensor],
           held: Iterable[str] = ()) -> "OutputFrame":
        """The frame of ``outputs`` (names from :func:`returned_outputs`) under the transform ``elements``."""
        outputs = list(outputs)
        names = output_sites(resolved, outputs)
        return cls(resolved.spec.name, {o: resolved.outputs[o] for o in outputs},
                   {s: resolved.sites[s] for s in names},
                   {s: elements[s].detach() if s in elements else identity_of(resolved.sites[s]) for s in names},
                   [s for s in held if s in names])

    @property
    def moved(self) -> list[str]:
        """The sites acting on a returned output whose element is not the identity."""
        return [s for s in self.sites if not is_identity(self.sites[s], self.elements[s])]

    @property
    def moved_outputs(self) -> list[str]:
        """The returned outputs that come out in A's frame (some site acting on them moved)."""
        moved = set(self.moved)
        return [name for name, binding in self.outputs.items() if binding.sites() & moved]

    def notes(self) -> list[str]:
        """One line per moved output (what moved, how to undo it), and one when the frame was kept."""
        moved = set(self.moved)
        lines = [f"{name} comes out in A's frame, not B's: aligned(x) = act(g, B(x)) on "
                 f"{_axes_text(self.outputs[name], self.sites, moved)}; to get B's features back apply "
                 f"{OUTPUT_TRANSFORM_FILE} (symdsl.undo_output_frame), or align with keep_output_frame=True "
                 "(command line: --keep-output-frame)" for name in self.moved_outputs]
        if self.held:
            lines.append(f"B's output frame kept: site(s) {', '.join(self.held)} held at the identity (not matched), "
                         f"so {', '.join(self.outputs)} equal B's; the cost: B's weights are not aligned along those sites, so "
                         "an interpolation or merge with A gains nothing from them")
        return lines

    def record(self) -> dict[str, Any]:
        """For ``symdsl.json``: outputs and their patterns, the moved and the held sites, the file (if written)."""
        return {"outputs": {name: b.pattern for name, b in self.outputs.items()}, "moved_sites": self.moved,
                "moved_outputs": self.moved_outputs, "held_sites": list(self.held),
                "file": OUTPUT_TRANSFORM_FILE if self.moved else None}

    def inverse(self) -> dict[str, torch.Tensor]:
        """Each site's inverse element (asked of its group kind), mapping A's frame back to B's."""
        inverse = {}
        for name, site in self.sites.items():
            if site.per in self.sites:
                # the inverse of (parent, per-index map) reindexes the maps by the parent: not written yet
                raise UsageError(f"output frame: site '{name}' is declared per '{site.per}', which also acts on "
                                 f"{', '.join(self.outputs)}; undoing such a pair is not supported: align with "
                                 "keep_output_frame=True (command line: --keep-output-frame) instead")
            try:
                inverse[name] = site.kind.inverse(self.elements[name])
            except ValueError as exc:
                raise UsageError(f"output frame: site '{name}' ({site.kind.name}) has no group inverse ({exc}); "
                                 "B's features cannot be recovered from the aligned ones: align with "
                                 "keep_output_frame=True (command line: --keep-output-frame)") from None
        return inverse

    def undo(self, outputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``outputs`` (name -> tensor) mapped from A's frame back to B's; other names pass through."""
        inverse = self.inverse()
        # the engine's act_outputs, on this frame's bindings: every moved axis gets g^-1
        return {name: act_tensor(value, self.outputs[name], inverse, self.sites) if name in self.outputs else value
                for name, value in outputs.items()}

    def metadata(self) -> dict[str, str]:
        """Safetensors metadata: format, spec, each output's axis layout, each site's kind and sizes."""
        sites = {name: {"kind": s.kind.name, "size": s.size, "size_in": s.size_in, "per": s.per,
                        "per_size": s.per_size, "options": s.options} for name, s in self.sites.items()}
        return {"format": FORMAT, "version": "1", "spec": self.spec,
                "outputs": json.dumps({n: _binding_record(b) for n, b in self.outputs.items()}, sort_keys=True),
                "sites": json.dumps(sites, sort_keys=True, default=str), "order": json.dumps(list(self.sites)),
                "held": json.dumps(self.held)}

    def save(self, folder: str | Path) -> Path:
        """Write ``output_transform.safetensors`` into ``folder``; returns the file."""
        from safetensors.torch import save_file

        file = Path(folder) / OUTPUT_TRANSFORM_FILE
        save_file({k: v.detach().contiguous().cpu() for k, v in self.elements.items()}, str(file),
                  metadata=self.metadata())
        return file

    @classmethod
    def load(cls, path: str | Path, registries: Registries | None = None) -> "OutputFrame":
        """Read ``output_transform.safetensors`` (or the align output folder holding it); a missing or
        foreign file, or a group kind no installed plugin provides, is a UsageError naming it."""
        file, metadata, elements = read_elements_file(
            path, OUTPUT_TRANSFORM_FILE, "output transform", f"align writes {OUTPUT_TRANSFORM_FILE} only when B's "
            "declared outputs come out moved (see the alignment's notes)")
        if metadata.get("format") != FORMAT:
            raise UsageError(f"{file}: format '{metadata.get('format')}' is not a symdsl output transform")
        kinds = (registries or default_registries()).group_kinds
        sites = {}
        records = json.loads(metadata["sites"])
        for name in json.loads(metadata.get("order", "[]")) or sorted(records):    # the spec's site order
            s = records[name]
            if s["kind"] not in kinds:
                raise UsageError(f"{file}: site '{name}' has group kind '{s['kind']}', which no installed plugin "
                                 "provides (install the plugin that aligned these models)")
            sites[name] = SiteDef(name, kinds[s["kind"]], int(s["size"]), int(s["size_in"]), s.get("per"),
                                  s.get("per_size"), dict(s.get("options") or {}))
        outputs = {n: _binding_from(n, r) for n, r in json.loads(metadata["outputs"]).items()}
        return cls(metadata.get("spec", "?"), outputs, sites, elements, list(json.loads(metadata.get("held", "[]"))))


def undo_output_frame(outputs: Mapping[str, torch.Tensor] | Any, frame: Any,
                      registries: Registries | None = None) -> dict[str, torch.Tensor]:
    """Map the aligned model's ``outputs`` back to B's frame: ``undo(aligned(x)) == B(x)``.

    ``outputs``: a mapping (a transformers ``ModelOutput`` works) from output name to tensor;
    the declared outputs that moved are mapped with the inverse elements, every other entry is
    passed through (as it was). ``frame``: the :class:`~symdsl.api.alignment.Alignment` (or its
    ``output_frame``), or an align output folder / its ``output_transform.safetensors``.

    >>> import symdsl, torch, transformers
    >>> config = transformers.BertConfig(**symdsl.find_spec("hf-bert").document.example.config)
    >>> a, b = (transformers.BertModel(config).eval() for _ in range(2))
    >>> aligned = symdsl.align(a, b)
    >>> ids = torch.randint(0, config.vocab_size, (2, 5))
    >>> back = symdsl.undo_output_frame(aligned.model(input_ids=ids), aligned)
    >>> torch.allclose(back["last_hidden_state"], b(input_ids=ids).last_hidden_state, atol=1e-5)
    True
    """
    if isinstance(frame, (str, Path)):
        frame = OutputFrame.load(frame, registries)
    elif not isinstance(frame, OutputFrame):
        found = getattr(frame, "output_frame", None)
        if found is None:
            raise UsageError("undo_output_frame needs an alignment whose model returns declared outputs (see its "
                             "output_frame), an OutputFrame, or an align output folder")
        frame = found
    if not isinstance(outputs, Mapping):
        raise UsageError(f"undo_output_frame maps named outputs (a dict or a transformers ModelOutput), "
                         f"got {type(outputs).__name__}")
    return frame.undo({name: value for name, value in outputs.items()})


__all__ = ["OUTPUT_TRANSFORM_FILE", "OutputFrame", "hold_sites", "held_sites", "output_sites", "returned_outputs",
           "undo_output_frame", "with_identities"]
