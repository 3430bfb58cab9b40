"""``symdsl.align``: bring model B into model A's frame, whatever their widths.

Orchestration every caller needs lives here, not in the command line: finding the spec,
refusing architecture-changing specs where a standard checkpoint is wanted, and lifting a
narrower B into A's configuration first.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ..act import act_state_dict
from ..canon import kept_for_restore
from ..errors import UsageError
from ..models.origin import origin_of
from ..models.pages import release_pages
from ..models.output import check_output
from ..models.save import check_savable, output_dtype
from ..plugins import default_registries
from ..registry import Registries
from ..spec.cache import resolve_cached
from ..spec.inputs import with_input_shapes
from ..spec.load import Spec
from ..width import needs_lift, wide_and_narrow
from .alignment import Alignment
from .compat import check_compatible, check_data_fits, check_finite
from .output_frame import OutputFrame, held_sites, hold_sites, output_sites, returned_outputs, with_identities
from .pipeline import act_in_place, dataset_for, match, matcher_options, prepare, spec_for
from .transform_file import state_digest
from .verify import verify_spec
from .widths import align_widths


def refuse_architecture_change(spec: Spec, model: torch.nn.Module, registries: Registries, what: str) -> None:
    """A spec whose canonicalizers change the architecture cannot give a standard checkpoint: say so."""
    resolved = resolve_cached(spec, model, registries)       # binding reads the model, never changes it
    changed = sorted({s.name for s in resolved.canonicalize if s.canonicalizer.changes_architecture})
    if changed:
        raise UsageError(f"spec '{spec.name}' changes the architecture ({', '.join(changed)}): its models are not "
                         f"standard checkpoints, so {what} would not be one; compare routes with symdsl.barrier "
                         "(`symdsl barrier`), or pass standard=False to get the rewritten model")


def align(model_a: torch.nn.Module, model_b: torch.nn.Module, spec: Spec | str | None = None,
          matcher: str = "weight", *, data=None, seed: int = 0, device=None, standard: bool = True,
          verify: bool = True, progress=None, out: str | Path | None = None, overwrite: bool = False,
          dtype: str = "auto", keep_output_frame: bool = False, inputs: Mapping[str, Sequence[int]] | None = None,
          registries: Registries | None = None, canonicalize_a_in_place: bool = False,
          canonicalize_b_in_place: bool = False, spill_dir: str | Path | None = None, **options: Any) -> Alignment:
    """Align ``model_b`` to ``model_a`` modulo the symmetries of their spec.

    ``spec``: a spec name, a ``.yaml`` path, a :class:`~symdsl.spec.Spec`, or None (the one
    shipped or plugin spec that matches A's class). ``matcher``: ``weight`` (default),
    ``activation`` or ``learned`` (these two need ``data``: ``"digits"``, ``"text:PATH"``, a
    :class:`~symdsl.data.Dataset` ...), or a plugin's. ``options`` go to the matcher
    (``max_iter``, ``permutations_only``, ``steps`` ...). A narrower B is lifted into A's
    configuration first (same function), so the result lives in A's space. With ``standard``
    (the default) a spec that changes the architecture is refused. With ``verify`` (the default)
    the spec's static and numeric checks must pass on A first (cached per architecture; see
    :mod:`symdsl.api.verify`). The models must be one architecture (:mod:`symdsl.api.compat`:
    configurations agree up to fields that cannot matter, or differ in width where B is
    narrower), checked before any work. ``out``: a folder to save the result into
    (:meth:`Alignment.save`: checkpoint, transform, B's tokenizer files, model card), validated
    before any work (not an input, writable, empty unless ``overwrite``), written in ``dtype``
    (``auto``: B's own; ``float32``, ``bfloat16``, ``float16``). Computation runs in float32 or
    better whatever the inputs' dtype. ``options`` are checked against the matcher's declared
    options first (:func:`symdsl.api.pipeline.matcher_options`; ``symdsl plugins`` lists them).
    ``inputs`` sets the shapes of the spec's example inputs the check runs on (``{"x": (1, 3, 32,
    32)}``, as for :func:`symdsl.check`). Feature models (a backbone, an encoder without a head)
    return outputs the spec declares equivariant: the aligned model returns them in A's frame,
    ``act(g, B(x))``; ``output_frame`` holds those elements, ``notes`` says so and
    :func:`symdsl.undo_output_frame` maps them back. ``keep_output_frame`` holds the sites acting
    on them at the identity instead (:mod:`symdsl.api.output_frame`), so the aligned model returns
    B's outputs: a drop-in replacement for B, at the price of leaving those sites unmatched.
    ``canonicalize_a_in_place``: canonicalize ``model_a`` itself, not a copy (one model's memory
    less; A is left in canonical form: the same function, other weights). For callers that give A
    up, as the command line does; by default the models passed in are left as they are.
    ``canonicalize_b_in_place``: the same for B, which then *becomes* the aligned B (the action
    moves its tensors in place, one at a time; ``model`` is ``model_b`` itself): of the original B
    only what restoring B's own form reads is kept (:meth:`symdsl.canon.Canonicalizer.restore_reads`:
    the folded norm gains), and the whole B is copied first if a canonicalize step does not say
    what it reads. The results are bit for bit those of the copying path. Without data only (a
    run with data evaluates copies of the models in float32).
    ``spill_dir``: with either in-place option, a folder on disk (not a memory file system) where
    the tensors canonicalization wrote are moved, mapped back and released once read
    (:mod:`symdsl.models.spill`: same bits, files removed at once), so they do not stay in memory
    through matching; the command line uses the output's parent folder.

    >>> import symdsl, torch
    >>> from symdsl.experiments.train import small_vit
    >>> from symdsl.data import load_dataset
    >>> a, b = (small_vit(load_dataset("digits"), seed=s) for s in (0, 1))
    >>> aligned = symdsl.align(a, b)
    >>> x = torch.randn(2, 1, 8, 8)
    >>> type(aligned.model) is type(b), torch.allclose(aligned.model(x), b(x), atol=1e-4)
    (True, True)
    """
    registries = registries or default_registries()
    options = matcher_options(matcher, options, registries)
    origin = origin_of([model_a, model_b], layout=1)       # the output keeps B's layout, tokenizer and dtype
    output_dtype(dtype)
    if out is not None:
        check_output(out, inputs=model_sources([model_a, model_b]), overwrite=overwrite)
        check_savable(model_b)             # the output is B's class: refused now, not after the matching
    spec = with_input_shapes(spec_for(spec, model_a, registries), inputs or {})
    check_compatible([model_a, model_b], spec, lift=needs_lift(model_a, model_b))
    check_finite([model_a, model_b])
    if data is not None:
        data = dataset_for(data, registries)
        check_data_fits(model_a, data)
    if standard:
        refuse_architecture_change(spec, model_a, registries, "the aligned model")
    if verify:
        verify_spec(spec, model_a, registries, seed=seed)
    if needs_lift(model_a, model_b):
        if wide_and_narrow(model_a, model_b, spec, registries)[2]:
            raise UsageError("B is wider than A: the narrow model is lifted into the wide one's configuration and the "
                             "result lives in A's space, so A must be the wide model; swap A and B")
        if keep_output_frame:
            raise UsageError("keep_output_frame is not supported when B is narrower than A: the lifted B's outputs "
                             "have A's width, not B's; align models of one width, or leave keep_output_frame out")
        width = align_widths(model_a, model_b, spec, matcher, data=data, seed=seed, device=device, progress=progress,
                             registries=registries, **options)
        alignment = Alignment(width.prepared, width.result, width.aligned, {"width_lift": width.lifted.to_record()},
                              ["B was narrower than A: lifted into A's configuration (same function), then matched "
                               "there"], origin=origin)
    else:
        # without data no forward pass runs: the copies stay in the inputs' dtype (bounded memory)
        # B in place (no data: B's tensors are the states): keep only what restoring B's form reads
        kept = (kept_for_restore(model_b, resolve_cached(spec, model_b, registries))
                if canonicalize_b_in_place and data is None and model_b is not model_a else None)
        in_place = [0] * canonicalize_a_in_place + [1] * (kept is not None)
        prepared = prepare([model_a, model_b], spec, device=device, registries=registries, keep_dtype=data is None,
                           in_place=in_place, spill_dir=spill_dir)
        returned = returned_outputs(spec, prepared.resolved, prepared.models[0])
        # keep_output_frame: the matcher sees a spec without the sites acting on B's returned outputs
        held = held_sites(prepared.resolved, output_sites(prepared.resolved, returned)) if keep_output_frame else []
        seen = dataclasses.replace(prepared, resolved=hold_sites(prepared.resolved, held))
        result = match(seen, 1, matcher, data=data, seed=seed, progress=progress, registries=registries, **options)
        result.elements = with_identities(result.elements, prepared.resolved, held)
        frame = OutputFrame.of(prepared.resolved, returned, result.elements, held)
        if kept is None:
            aligned = act_state_dict(prepared.resolved, prepared.states[1], result.elements)
            alignment = Alignment(prepared, result, aligned, original_b=model_b, origin=origin, output_frame=frame)
        else:
            # the transform file records the canonical digests: taken before B's tensors move
            digests = [state_digest(state, after=lambda tensor: release_pages([tensor]))
                       for state in prepared.states[:2]]
            aligned = act_in_place(prepared.resolved, prepared.states[1], result.elements)
            alignment = Alignment(prepared, result, aligned, original_b=kept, origin=origin, output_frame=frame,
                                  a_digest=digests[0], b_digest=digests[1])
    if options:
        alignment.info["options"] = dict(options)
    if out is not None:
        alignment.save(out, overwrite=overwrite, dtype=dtype)
    return alignment


def model_sources(models) -> list[str]:
    """The paths the models were loaded from (``symdsl_source``, set by :func:`symdsl.load_model`).

    >>> import torch
    >>> net = torch.nn.Linear(2, 2); net.symdsl_source = "runs/a"
    >>> model_sources([net, torch.nn.Linear(2, 2)])
    ['runs/a']
    """
    return [m.symdsl_source for m in models if isinstance(getattr(m, "symdsl_source", None), str)]
