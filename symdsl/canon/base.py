"""The canonicalizer interface and the driver that runs a resolved spec's steps."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import BindError, suggest


class Canonicalizer:
    """A named, function-preserving rewrite of a model, configured by a spec step.

    Subclasses set ``name``, an ``Args`` pydantic model, ``name_fields`` (argument fields
    that hold tensor or module names, which get the spec's backbone prefix), and implement
    :meth:`apply`. ``changes_architecture`` is True only for rewrites whose result is no
    longer a standard checkpoint of the original class (never a default).
    """

    name: ClassVar[str]
    Args: ClassVar[type[BaseModel]]
    name_fields: ClassVar[tuple[str, ...]] = ()
    changes_architecture: ClassVar[bool] = False

    def prepare(self, raw: Any, prefix: str) -> BaseModel:
        """Validate a step's arguments and prefix its names; raise ValueError with a clear message."""
        if isinstance(raw, list) and "names" in self.Args.model_fields:
            raw = {"names": raw}
        try:
            args = self.Args.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(map(str, first["loc"]))
            allowed = ", ".join(self.Args.model_fields)
            if first["type"] == "extra_forbidden":
                msg = f"unknown argument '{where}'{suggest(str(first['loc'][-1]), self.Args.model_fields)}"
            else:
                msg = f"argument '{where}': {first['msg']}" if where else first["msg"]
            raise ValueError(f"{self.name}: {msg} (arguments: {allowed})") from None
        updates = {}
        for field in self.name_fields:
            value = getattr(args, field)
            updates[field] = [prefix + v for v in value] if isinstance(value, list) else prefix + value
        return args.model_copy(update=updates)

    def apply(self, model: torch.nn.Module, args: BaseModel, resolved) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def restore(self, model: torch.nn.Module, args: BaseModel, resolved, context: "RestoreContext") -> str | None:
        """Undo this step on an *aligned* canonical model where the transform allows it (optional).

        Returns a one-line note for the user: what was restored, or why the model stays in
        canonical form. The default restores nothing; the model keeps its (function-preserving)
        canonical form.
        """
        return f"{self.name}: left in canonical form"

    def restore_reads(self, args: BaseModel) -> list[str] | None:
        """The tensors of the model *before* canonicalization (state-dict names) that :meth:`restore`
        reads through :meth:`RestoreContext.original_tensor`, or None when that is not declared.

        A caller that canonicalizes a model in place keeps just these (e.g. a folded norm's gain,
        shape (d,)) instead of a copy of the whole model; None makes it keep the whole model. A
        canonicalizer that keeps the default :meth:`restore` reads nothing.
        """
        return [] if type(self).restore is Canonicalizer.restore else None


class StrictArgs(BaseModel):
    """Base for canonicalizer arguments: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


def model_tensor(model: torch.nn.Module, name: str) -> torch.Tensor:
    """The parameter or buffer called ``name`` (a state-dict key) in ``model``."""
    owner, _, attribute = name.rpartition(".")
    try:
        module = model.get_submodule(owner) if owner else model
    except AttributeError:
        module = None
    tensor = getattr(module, attribute, None) if module is not None else None
    if not isinstance(tensor, torch.Tensor):
        raise BindError(f"model has no tensor '{name}'{suggest(name, dict(model.state_dict()))}")
    return tensor


def module_slot(model: torch.nn.Module, path: str) -> tuple[torch.nn.Module, str, Any]:
    """``(parent, attribute, current)`` for a dotted module path, so a rewrite can replace it
    with ``setattr(parent, attribute, new)``; ``current`` is None if there is nothing there.

    >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2))
    >>> parent, attr, current = module_slot(m, "0")
    >>> attr, type(current).__name__
    ('0', 'Linear')
    """
    owner, _, attribute = path.rpartition(".")
    try:
        parent = model.get_submodule(owner) if owner else model
    except AttributeError:
        raise BindError(f"the model has no module '{owner}' (from '{path}')") from None
    return parent, attribute, getattr(parent, attribute, None)


@dataclass
class RestoreContext:
    """What a canonicalizer's ``restore`` may read: the model before canonicalization (same
    configuration, not aligned), the alignment's elements (site -> element) and the steps run.

    ``original`` is that model, or only the tensors the steps declare they read
    (:meth:`Canonicalizer.restore_reads`, name -> tensor), kept by a caller that canonicalized
    the model in place (:func:`kept_for_restore`).
    """

    original: torch.nn.Module | Mapping[str, torch.Tensor]
    elements: Mapping[str, torch.Tensor]
    resolved: Any

    def original_tensor(self, name: str) -> torch.Tensor:
        """The tensor ``name`` of the model before canonicalization.

        >>> context = RestoreContext({"norm.weight": torch.ones(2)}, {}, None)
        >>> context.original_tensor("norm.weight").tolist()
        [1.0, 1.0]
        """
        if isinstance(self.original, torch.nn.Module):
            return model_tensor(self.original, name)
        if name not in self.original:
            raise BindError(f"restore reads '{name}' of the model before canonicalization, but only "
                            f"{sorted(self.original)[:5]} were kept: the canonicalizer that reads it must list it "
                            "in restore_reads()")
        return self.original[name]

    def monomial(self, site: str) -> torch.Tensor | None:
        """``|M|`` for the site's element M when M is a (signed) permutation matrix, else None.

        Such an element commutes with per-coordinate gains (M diag(v) = diag(|M| v) M), which is
        what makes a folded gain or a tie restorable. Batched (``per``) sites give None.

        >>> import torch
        >>> from symdsl.spec.binding import SiteDef
        >>> from symdsl.groups import get_group_kind
        >>> site = SiteDef("r", get_group_kind("permutation"), 3, 3)
        >>> context = RestoreContext(torch.nn.Identity(), {"r": torch.tensor([2, 0, 1])},
        ...                          type("R", (), {"sites": {"r": site}})())
        >>> context.monomial("r").tolist()
        [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
        """
        site_def = self.resolved.sites[site]
        element = self.elements.get(site)
        if site_def.per is not None:
            return None
        if element is None:
            return torch.eye(site_def.size, dtype=torch.float64)
        matrix = site_def.kind.to_matrix(element, dtype=torch.float64, n_in=site_def.size_in)
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            return None
        magnitude = matrix.abs()
        unit = bool((((magnitude - 1).abs() < 1e-9) | (magnitude < 1e-9)).all())   # entries 0 or +-1
        one_per_row = bool(((magnitude > 0.5).sum(-1) == 1).all() and ((magnitude > 0.5).sum(-2) == 1).all())
        return (magnitude > 0.5).to(torch.float64) if unit and one_per_row else None


def restore(model: torch.nn.Module, resolved, context: RestoreContext) -> list[str]:
    """Undo the canonicalize steps on an aligned canonical ``model``, last step first, where the
    alignment's transform allows; returns the steps' notes (each once). The function is unchanged."""
    notes: list[str] = []
    with torch.no_grad():
        for step in reversed(resolved.canonicalize):
            note = step.canonicalizer.restore(model, step.args, resolved, context)
            if note and note not in notes:
                notes.append(note)
    return notes


def restore_reads(resolved) -> list[str] | None:
    """The tensors of the original model that :func:`restore` may read, over all the steps of
    ``resolved`` (each once, in order), or None when a step does not declare them."""
    names: list[str] = []
    for step in resolved.canonicalize:
        reads = step.canonicalizer.restore_reads(step.args)
        if reads is None:
            return None
        names.extend(name for name in reads if name not in names)
    return names


def kept_for_restore(model: torch.nn.Module, resolved) -> dict[str, torch.Tensor] | None:
    """Copies of the tensors of ``model`` (not canonicalized yet) that :func:`restore` reads, or None
    when a step does not declare them (then the caller must keep the whole model).

    What lets a model be canonicalized in place and still be restored: for Llama's spec, the
    norm gains (d,) that folding overwrites, a few KB where a copy of the model is GBs.
    """
    names = restore_reads(resolved)
    if names is None:
        return None
    return {name: model_tensor(model, name).detach().clone() for name in names}


def canonicalize(model: torch.nn.Module, resolved) -> torch.nn.Module:
    """Run every canonicalize step of ``resolved`` on ``model`` in place, in order; return the model.

    The model computes the same function before and after (each canonicalizer is tested
    for that in float64). For a spec with a ``canonical`` section the steps read the
    original form's bindings (``resolved.original``); a model resolved while already in
    canonical form (``resolved.original`` is None) is left as it is.
    """
    view = getattr(resolved, "original", resolved)   # the bindings the steps read
    if view is None:
        return model                                   # already canonical
    with torch.no_grad():
        for step in resolved.canonicalize:
            step.canonicalizer.apply(model, step.args, view)
    return model
