"""The alignment steps in canonical form: canonicalize copies, match, transform, merge.

These work on canonical models and state dicts (LayerNorm gains folded, embeddings untied ...);
:mod:`symdsl.api` builds the public functions on them and hands back models in the caller's
own parametrisation. ``registries`` defaults to the installed plugins
(:func:`symdsl.plugins.default_registries`).
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ..act import act_state_dict
from ..act.engine import act_tensor
from ..canon import canonicalize
from ..data import Dataset, load_dataset
from ..errors import BindError, UsageError
from ..match import MatchResult
from ..models.origin import HALF, storage_dtype
from ..models.pages import release_pages
from ..models.spill import spill_written
from ..options import check_options
from ..plugins import default_registries
from ..registry import Registries
from ..spec import ResolvedSpec
from ..spec.cache import resolve_cached
from ..spec.load import Spec
from ..spec.registry import find_spec, match_spec

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """Canonical copies of the models, their spec bound once, and their state dicts.

    The state dicts are copies of the models' tensors, or (``prepare(keep_dtype=True)``) the
    models' tensors themselves: then loading weights into ``models[i]`` changes ``states[i]``.
    """

    spec: Spec
    resolved: ResolvedSpec
    models: list[torch.nn.Module]
    states: list[dict[str, torch.Tensor]]


def spec_for(spec: Spec | str | None, model: torch.nn.Module, registries: Registries, *,
             trust_code: bool = False) -> Spec:
    """``spec`` as a Spec: loaded by name or path, or (None) the one spec that matches ``model``.

    ``trust_code`` lets the spec's ``example.factory`` run (a given Spec is marked trusted).
    """
    if isinstance(spec, str):
        return find_spec(spec, registries, trust_code=trust_code)
    if spec is not None:
        return dataclasses.replace(spec, trusted=True) if trust_code and not spec.trusted else spec
    return match_spec(model, registries)


def dataset_for(data: Dataset | str | None, registries: Registries, **options) -> Dataset | None:
    """A dataset reference (``digits``, ``text:PATH`` ... or a plugin's) as a Dataset, or None."""
    return None if data is None else load_dataset(data, datasets=registries.datasets, **options)


def matcher_options(matcher: str, options: Mapping[str, Any], registries: Registries) -> dict[str, Any]:
    """``options`` checked against the matcher's declared options and coerced, before any work.

    An unknown matcher name, an unknown option or a bad value is a :class:`~symdsl.errors.UsageError`
    naming it and listing what is valid; a matcher that declares no options gets them unchecked.

    >>> from symdsl.plugins import load
    >>> matcher_options("weight", {"max_iter": "5"}, load())
    {'max_iter': 5}
    """
    return check_options(registries.matchers.lookup(matcher), f"matcher '{matcher}'", options)


def canonical_copy(model: torch.nn.Module, spec: Spec, registries: Registries, *, device=None,
                   keep_dtype: bool = False, in_place: bool = False) -> torch.nn.Module:
    """A canonicalized copy of ``model`` under ``spec``, on ``device`` if given; ``model`` itself is
    left as it is.

    A half-precision model is copied in float32, unless ``keep_dtype``: then the copy keeps the
    storage dtype (a bfloat16 model stays bfloat16, half the memory of a float32 copy), which is
    exact enough for weight-only work because every canonicalize step is elementwise (a gain
    multiplied into a reader, a bias divided, a mean subtracted): computed in float and rounded
    once into the tensor's dtype. Runs that evaluate the model on data need the float32 copy.
    ``in_place``: canonicalize ``model`` itself and return it (no copy: for a caller that gives
    the model up, such as the command line, which never reads its inputs again).
    """
    model = (model if in_place else copy.deepcopy(model)).eval()
    if not keep_dtype and storage_dtype(model) in HALF:
        model.float()
    if device is not None:
        model.to(device)
    canonicalize(model, resolve_cached(spec, model, registries))
    return model


def prepare(models: Sequence[torch.nn.Module], spec: Spec | str | None = None, *, device=None,
            registries: Registries | None = None, keep_dtype: bool = False,
            in_place: Sequence[int] = (), spill_dir: str | Path | None = None) -> Prepared:
    """Copy and canonicalize every model (function-preserving) under one spec.

    Half-precision models (float16, bfloat16) are copied in float32, unless ``keep_dtype``:
    then copies and state dicts stay in the models' storage dtype (two bfloat16 models cost two
    bfloat16 copies, not two float32 ones) and whoever computes upcasts one tensor at a time
    (weight matching in float64, the action engine in float32: :func:`symdsl.act.act_state_dict`).
    :func:`symdsl.align` and :func:`merge_models` keep the dtype when no data is given (no
    forward pass runs). Outputs are cast when written (``dtype="auto"``: the input's dtype).
    ``in_place``: indices of models canonicalized themselves rather than copied (see
    :func:`canonical_copy`); a model given twice is copied. ``spill_dir`` (with ``keep_dtype``): each
    model canonicalized in place has the tensors canonicalization wrote spilled there
    (:func:`symdsl.models.spill.spill_written`) before the next model is canonicalized, so at
    most one model's written tensors are in memory at once.
    """
    registries = registries or default_registries()
    if len(models) < 2:
        raise UsageError("alignment needs at least two models")
    kinds = {type(m).__name__ for m in models}
    if len(kinds) > 1:
        raise UsageError(f"models are of different classes: {sorted(kinds)}")
    spec = spec_for(spec, models[0], registries)
    alone = [sum(other is model for other in models) == 1 for model in models]   # the same object twice: copy it
    copies = []
    for index, model in enumerate(models):
        own = index in in_place and alone[index]
        copies.append(canonical_copy(model, spec, registries, device=device, keep_dtype=keep_dtype, in_place=own))
        if own and keep_dtype and spill_dir is not None:
            spilled = spill_written(copies[-1], {k: v.detach() for k, v in copies[-1].state_dict().items()}, spill_dir)
            log.info("model %d: %.2f GB of canonical tensors spilled to %s", index, spilled / 1e9, spill_dir)
    resolved = resolve_cached(spec, copies[0], registries)
    shapes = [{k: tuple(v.shape) for k, v in m.state_dict().items()} for m in copies]
    for index, other in enumerate(shapes[1:], start=1):
        if other != shapes[0]:
            # a tensor only one of them has, or one shape that differs (never StopIteration: the dicts differ)
            bad = next(k for k in {**shapes[0], **other} if other.get(k) != shapes[0].get(k))
            raise UsageError(f"model {index} differs from model 0 at '{bad}': {other.get(bad)} vs {shapes[0][bad]}; "
                             "models of different widths need width-heterogeneous alignment")
    # keep_dtype (bounded memory): the states are the copies' own tensors, not a second copy of each model
    states = [{k: v.detach() if keep_dtype else v.detach().clone() for k, v in m.state_dict().items()} for m in copies]
    for state in states if keep_dtype else ():
        # models canonicalized in place: what the checks and the steps read of a checkpoint's mapped
        # pages, and did not write, leaves the resident set (symdsl.models.pages)
        release_pages(state.values())
    return Prepared(spec, resolved, copies, states)


def act_in_place(resolved: ResolvedSpec, state: Mapping[str, torch.Tensor],
                 elements: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Move every bound tensor of ``state`` by ``elements`` in place, one tensor at a time; return ``state``.

    The values are bit for bit those of :func:`symdsl.act.act_state_dict` (each tensor computed
    the same way, in float32 for a half-precision one, and rounded once into its dtype), but no
    second copy of the model is built: the peak is one tensor's float32 result (a large tensor is
    moved in slices of :data:`CHUNK_BYTES` along an axis no site acts on). For a caller that
    gives the state up (the command line: B's canonical tensors become the aligned B). Names
    that share one tensor (a tie the spec keeps) are moved once, from the value they had, and
    get what loading ``act_state_dict``'s result would give them (the last name's value).

    >>> from symdsl.plugins import load
    >>> from symdsl.spec import load_spec_text, resolve
    >>> spec = load_spec_text('symdsl: 1\\nname: t\\nsites: {h: {group: permutation, size: 3}}\\n'
    ...                       'tensors: {weight: "h _", bias: h}\\n')
    >>> r = resolve(spec, torch.nn.Linear(2, 3), registries=load())
    >>> state = {"weight": torch.arange(6.).reshape(3, 2), "bias": torch.arange(3.)}
    >>> act_in_place(r, state, {"h": torch.tensor([2, 0, 1])})["bias"].tolist()
    [2.0, 0.0, 1.0]
    """
    unknown = [s for s in elements if s not in resolved.sites]
    if unknown:
        raise BindError(f"transform names sites not in spec '{resolved.spec.name}': {unknown[:5]}")
    # names sharing one storage (a tie): moved together, from the value before any of them is written
    shared: dict[int, list[str]] = {}
    for name, tensor in state.items():
        if name in resolved.tensors and tensor.numel():
            shared.setdefault(tensor.untyped_storage().data_ptr(), []).append(name)
    with torch.no_grad():
        for names in shared.values():
            free = _free_axis(resolved, names[0], elements) if len(names) == 1 else None
            if free is not None and state[names[0]].numel() * 4 > CHUNK_BYTES:
                _move_in_chunks(resolved, names[0], state[names[0]], elements, free)
                continue
            moved = {name: _moved(resolved, name, state[name], elements) for name in names}
            for name in names:                 # in state order: for a tie the last name wins, as loading does
                target, value = state[name], moved[name]
                if value.shape != target.shape:
                    raise BindError(f"'{name}' would change shape {tuple(target.shape)} -> {tuple(value.shape)}: "
                                    "a rectangular transform cannot move a model in place; use act_state_dict")
                target.copy_(value)
    return dict(state)


# a tensor whose float32 form is larger is moved in slices of about this size along an axis no
# element acts on (the 1B shape's embedding: 1 GB in float32, twice during its product)
CHUNK_BYTES = 256 << 20
_MIN_ROWS = 4096     # slices stay large products (a BLAS gives them the whole tensor's bits; 1-row ones not)


def _free_axis(resolved: ResolvedSpec, name: str, elements: Mapping[str, torch.Tensor]) -> int | None:
    """An axis of tensor ``name`` that no site acts on (no site factor, no dimension a ``per`` site
    is batched along): moving a slice along it needs only that slice. None if there is none."""
    pers = {site.per for site in resolved.sites.values() if site.per is not None}
    for index, axis in enumerate(resolved.tensors[name].axes):
        factors = [f for part in axis.parts for f in part]
        if all(f.site is None and f.dim not in pers for f in factors):
            return index
    return None


def _move_in_chunks(resolved: ResolvedSpec, name: str, tensor: torch.Tensor,
                    elements: Mapping[str, torch.Tensor], axis: int) -> None:
    """Move ``tensor`` in place slice by slice along ``axis`` (free of sites): each slice is read,
    moved as :func:`_moved` moves a tensor and written back before the next is read."""
    row_bytes = 4 * tensor.numel() // max(tensor.shape[axis], 1)            # float32 bytes of one slice row
    rows = max(CHUNK_BYTES // max(row_bytes, 1), _MIN_ROWS)
    for start in range(0, tensor.shape[axis], rows):
        target = tensor.narrow(axis, start, min(rows, tensor.shape[axis] - start))
        value = _moved(resolved, name, target, elements)
        if value.shape != target.shape:
            raise BindError(f"'{name}' would change shape along an axis no site acts on: {tuple(target.shape)} -> "
                            f"{tuple(value.shape)}; a rectangular transform cannot move a model in place")
        target.copy_(value)


def _moved(resolved: ResolvedSpec, name: str, tensor: torch.Tensor,
           elements: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """One tensor moved as :func:`symdsl.act.act_state_dict` moves it, never a view of ``tensor`` itself."""
    if tensor.dtype in HALF:                   # (shape of tensor) computed in float32, rounded once
        return act_tensor(tensor.float(), resolved.tensors[name], elements, resolved.sites).to(tensor.dtype)
    moved = act_tensor(tensor, resolved.tensors[name], elements, resolved.sites)
    return moved.clone() if moved.untyped_storage().data_ptr() == tensor.untyped_storage().data_ptr() else moved


def forward_kwargs(model: torch.nn.Module, inputs: torch.Tensor, task: str) -> dict[str, torch.Tensor]:
    """How a batch is passed to forward(): ``input_ids`` for language models, the first argument otherwise."""
    if task == "language_model":
        return {"input_ids": inputs}
    first = next(iter(inspect.signature(model.forward).parameters))
    return {first: inputs}


def match(prepared: Prepared, index: int, matcher: str = "weight", *, data=None, batches: int = 8,
          progress=None, seed: int = 0, registries: Registries | None = None, **options) -> MatchResult:
    """Align model ``index`` to model 0 with the named matcher."""
    registries = registries or default_registries()
    chosen = registries.matchers.lookup(matcher)
    if chosen.needs_data:
        if data is None:
            raise UsageError(f"matcher '{matcher}' looks at activations or the task loss: give it data "
                             "(data='digits', a symdsl.data.Dataset, ...; command line: --data)")
        dataset = load_dataset(data, datasets=registries.datasets)
        model = prepared.models[0]
        if getattr(chosen, "data_mode", "activations") == "dataset":
            return chosen.match(prepared.resolved, prepared.states[0], prepared.states[index], seed=seed,
                                progress=progress, model=model, dataset=dataset, registries=registries, **options)
        dtype = next(model.parameters()).dtype
        device = next(model.parameters()).device
        feed = []
        for i, (x, _) in enumerate(dataset.batches("train", 64, shuffle=True, seed=seed)):
            if i >= batches:
                break
            x = x.to(device=device, dtype=dtype if x.is_floating_point() else x.dtype)
            feed.append(forward_kwargs(model, x, dataset.task))
        options = {**options, "model": model, "batches": feed, "registries": registries}
    elif data is not None and getattr(chosen, "uses_data", False):
        # data is optional for this matcher (weight matching weighs vocabulary rows by token frequency)
        options = {**options, "dataset": load_dataset(data, datasets=registries.datasets)}
    return chosen.match(prepared.resolved, prepared.states[0], prepared.states[index], seed=seed,
                        progress=progress, **options)


def merge_models(models: Sequence[torch.nn.Module], spec: Spec | str | None = None, matcher: str = "weight", *,
                 weights: Sequence[float] | None = None, merger: str = "average", device=None,
                 registries: Registries | None = None, **options) -> tuple[torch.nn.Module, list[MatchResult]]:
    """Align every model to the first and merge them; returns a canonical model of the first's class."""
    registries = registries or default_registries()
    chosen = registries.mergers.lookup(merger)
    prepared = prepare(models, spec, device=device, registries=registries, keep_dtype=options.get("data") is None)
    results, aligned = [], [prepared.states[0]]
    for index in range(1, len(models)):
        result = match(prepared, index, matcher, registries=registries, **options)
        results.append(result)
        aligned.append(act_state_dict(prepared.resolved, prepared.states[index], result.elements))
    merged_state = chosen.merge(aligned, weights)
    merged = prepared.models[0]
    merged.load_state_dict(merged_state)
    return merged, results
