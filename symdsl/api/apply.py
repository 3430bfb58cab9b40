"""Apply a saved transform to another checkpoint of the same architecture: ``symdsl apply``.

An alignment's ``transform.safetensors`` moves B into A's frame. The same elements move any
model with B's architecture and configuration, for example a model fine-tuned from B, into
that frame too: ``apply`` canonicalizes the model with the transform's spec, acts on it and
writes it as ``align`` writes B (restored where the transform allows, B's tokenizer files, a
model card), so on B itself it reproduces ``align``'s output bit for bit.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch

from ..act import act_state_dict
from ..match import MatchResult
from ..models.origin import origin_of
from ..models.output import check_output
from ..models.save import check_savable, output_dtype
from ..plugins import default_registries
from ..registry import Registries
from ..spec.cache import resolve_cached
from ..spec.load import Spec
from .align import model_sources
from .alignment import Alignment
from .compat import check_finite
from .output_frame import OutputFrame, returned_outputs
from .pipeline import Prepared, canonical_copy, spec_for
from .transform_file import check_fits, load_transform, state_digest


def apply(transform: str | Path, model: torch.nn.Module, spec: Spec | str | None = None, *,
          out: str | Path | None = None, overwrite: bool = False, dtype: str = "auto",
          registries: Registries | None = None) -> Alignment:
    """Move ``model`` by the transform saved in ``transform`` (an align output folder or its
    ``transform.safetensors``).

    ``spec``: by default the one named in the transform's metadata. The transform must fit the
    model: an element for every site of the spec bound to ``model``, of the shape that site
    needs, or a UsageError names the site. ``out``: save the result (as ``align`` saves B).
    ``info["same_b"]`` says whether ``model`` is the B the transform was found for.

    >>> import symdsl, tempfile, torch
    >>> from symdsl.experiments.train import small_vit
    >>> from symdsl.data import load_dataset
    >>> a, b = (small_vit(load_dataset("digits"), seed=s) for s in (0, 1))
    >>> folder = tempfile.mkdtemp() + "/aligned"
    >>> aligned = symdsl.align(a, b, out=folder)
    >>> again = apply(folder, b)
    >>> again.info["same_b"], all(torch.equal(x, y) for x, y in zip(again.model.state_dict().values(),
    ...                                                               aligned.model.state_dict().values()))
    (True, True)
    """
    registries = registries or default_registries()
    saved = load_transform(transform)
    output_dtype(dtype)
    if out is not None:
        check_output(out, inputs=model_sources([model]) + [str(saved.file.parent)], overwrite=overwrite)
        check_savable(model)
    spec = spec_for(spec if spec is not None else saved.spec, model, registries)
    check_finite([model])
    canonical = canonical_copy(model, spec, registries, keep_dtype=True)   # the steps align's prepare takes
    resolved = resolve_cached(spec, canonical, registries)
    check_fits(saved, resolved.sites)
    state = {k: v.detach().clone() for k, v in canonical.state_dict().items()}
    digest = state_digest(state)
    moved = act_state_dict(resolved, state, saved.elements)
    result = MatchResult(saved.elements, "apply", info={"transform": str(saved.file)})
    # no A here: the canonical copy stands in A's slot (used only by interpolate)
    prepared = Prepared(spec, resolved, [copy.deepcopy(canonical), canonical], [state])
    alignment = Alignment(prepared, result, moved, {"same_b": saved.b_sha256 == digest if saved.b_sha256 else None},
                          original_b=model, origin=origin_of([model], layout=0),
                          a_digest=saved.metadata.get("a_sha256"), b_digest=digest,
                          output_frame=OutputFrame.of(resolved, returned_outputs(spec, resolved, canonical),
                                                      saved.elements))
    if out is not None:
        alignment.save(out, overwrite=overwrite, dtype=dtype)
    return alignment


__all__ = ["apply"]
