"""Bind a spec to a concrete model: the public :func:`resolve` and the order of its steps.

Resolution runs once per (spec, model configuration); the result is reused for every
transform applied to models of that configuration. Each concern lives in its own module and
works on a shared :class:`~symdsl.spec.context.ResolveContext`:

* :mod:`.config`: the model's configuration, dims and template ranges;
* :mod:`.expand`: template entries expanded over the ranges;
* :mod:`.sites`: the sites; :mod:`.bind`: tensor patterns; :mod:`.steps`: canonicalize steps;
* :mod:`.coverage`: every tensor bound or invariant, every site used, ties as declared.

This module chooses the backbone prefix and the present heads, runs the steps in order, and
handles specs with a ``canonical`` section (two forms of one model).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, fields
from typing import Any, Mapping

import torch

from ..canon.base import canonicalize
from ..errors import UsageError, suggest
from ..registry import Registries
from .bind import bind_entries
from .binding import CanonStep, ResolvedSpec
from .config import config_mismatches, model_config, resolve_dims
from .context import ResolveContext
from .coverage import check_coverage, check_ties, check_unused_sites, detect_ties
from .expand import expand_items, expand_keys
from .load import Spec
from .schema import Head
from .sites import resolve_sites
from .steps import expand_steps
from .template import substitute, substitute_all

# detect_ties and model_config are re-exported: callers import them from here
__all__ = ["TwoFormSpec", "detect_ties", "model_config", "resolve"]


def resolve(spec: Spec, model: torch.nn.Module | None = None, *, registries: Registries,
            state: Mapping[str, torch.Tensor] | None = None, config: Mapping[str, Any] | None = None) -> ResolvedSpec:
    """Bind ``spec`` to a model (or a state dict plus config). Raises SpecError listing every problem.

    ``registries`` supplies the group kinds and canonicalizers the spec names
    (``symdsl.plugins.load()``).

    >>> from symdsl.plugins import load
    >>> from symdsl.spec import load_spec_text, resolve
    >>> import torch
    >>> spec = load_spec_text('''
    ... symdsl: 1
    ... name: mlp
    ... dims: {d: 4}
    ... sites: {hidden: {group: permutation, size: d}}
    ... tensors: {0.weight: "hidden _", 0.bias: hidden, 2.weight: "_ hidden'"}
    ... invariant: [2.bias]
    ... ''')
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    >>> sorted(resolve(spec, net, registries=load()).sites)
    ['hidden']

    Every problem is reported at once, at its place in the spec file:

    >>> wide = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
    >>> resolve(spec, wide, registries=load())
    Traceback (most recent call last):
    ...
    symdsl.errors.SpecError: 3 problems in spec:
      <spec>:6:11: tensors.0.weight: axis 0 of '0.weight' has size 5, but the pattern gives 4 = 4
        hint: check the dims and the factor order of this axis
      <spec>:6:33: tensors.0.bias: axis 0 of '0.bias' has size 5, but the pattern gives 4 = 4
        hint: check the dims and the factor order of this axis
      <spec>:6:49: tensors.2.weight: axis 1 of '2.weight' has size 5, but the pattern gives 4 = 4
        hint: check the dims and the factor order of this axis
    """
    if model is not None and not isinstance(model, torch.nn.Module):
        raise UsageError(f"resolve needs a torch.nn.Module, got {type(model).__name__}")
    if state is None:
        if model is None:
            raise UsageError("resolve needs a model or a state dict")
        state = model.state_dict(keep_vars=True)
    if config is None:
        config = model_config(model) if model is not None else {}
    if spec.document.canonical is None:
        return _resolve_form(ResolveContext(spec, model, state, config, registries))
    return _resolve_two_forms(spec, model, state, config, registries)


@dataclass
class TwoFormSpec(ResolvedSpec):
    """A resolved spec with a ``canonical`` section: ``tensors``/``invariant`` are the canonical form's.

    ``original`` holds the bindings the canonicalize steps read (the ``tensors`` section on
    the original model); it is None when the model was already in canonical form, and then
    :func:`symdsl.canon.canonicalize` leaves the model alone.
    """

    original: ResolvedSpec | None = None


def _resolve_two_forms(spec: Spec, model, state, config, registries: Registries) -> TwoFormSpec:
    """Bind a spec that declares a canonical form, on a model in either form.

    A model in its original form is bound as the canonicalize steps read it, canonicalized on
    a copy, and the canonical form is bound on that copy (with coverage); a model already in
    canonical form (see :func:`_in_canonical_form`) is bound directly.
    """
    if model is None:
        raise UsageError(f"spec '{spec.name}' declares a canonical form ('canonical'): binding it needs the model "
                         "itself (its canonical form is made by running the canonicalize steps), not only a state dict")

    def two_form(resolved: ResolvedSpec, original: ResolvedSpec | None) -> TwoFormSpec:
        return TwoFormSpec(**{f.name: getattr(resolved, f.name) for f in fields(ResolvedSpec)}, original=original)

    # a fresh context per form: each form reports its own problems against its own tensors
    if _in_canonical_form(ResolveContext(spec, model, state, config, registries)):
        return two_form(_resolve_form(ResolveContext(spec, model, state, config, registries), "canonical"), None)
    original = _resolve_form(ResolveContext(spec, model, state, config, registries), "original")
    canonical = copy.deepcopy(model)
    canonicalize(canonical, original)
    after = ResolveContext(spec, canonical, canonical.state_dict(keep_vars=True), model_config(canonical), registries)
    return two_form(_resolve_form(after, "canonical", steps=original.canonicalize), original)


def _resolve_form(context: ResolveContext, form: str = "single", steps: list[CanonStep] | None = None) -> ResolvedSpec:
    """Bind one form of the model.

    ``form`` is ``single`` (no 'canonical' section: one set of bindings for both forms),
    ``original`` (a spec with a 'canonical' section, on the model before canonicalization:
    the bindings the canonicalize steps read, no coverage rule) or ``canonical`` (the model
    after canonicalization: surviving 'tensors' entries overlaid with 'canonical').
    ``steps`` are the already expanded steps when the canonical form was made here from the
    original model; without them the steps are expanded without checking their names,
    which refer to the original model.
    """
    document = context.document
    context.form = form
    for key, want, have in config_mismatches(context.spec, context.config):
        # the spec covers its classes only with these config values (pre-LN OPT, not post-LN)
        context.problem(("matches", "config", key), f"spec '{context.spec.name}' is for models whose config has "
                        f"{key} = {want!r}, but this model's is {have!r}: the spec does not describe it",
                        hint="use the spec written for this configuration (symdsl specs lists them; without a spec "
                             "name, symdsl check --model picks the one whose matches.config fits)")
    context.fail_if_problems()
    resolve_dims(context)
    context.used_sites = set()
    backbone = expand_keys(context, document.tensors, ("tensors",))
    extra = (expand_keys(context, document.canonical.tensors, ("canonical", "tensors"))
             if form == "canonical" and document.canonical is not None else [])
    prefix = context.prefix = _choose_prefix(context, [name for name, *_ in (extra or backbone)])
    fixed = {"prefix": prefix}
    # list sections of heads (invariant, tied, canonicalize) with ${prefix} filled in; keys are
    # expanded from the heads as written, so problems point at the right line
    context.head_models = {name: Head.model_validate(substitute_all(h.model_dump(), fixed))
                           for name, h in document.heads.items()}
    heads = _present_heads(context)
    context.sites = resolve_sites(context, heads)
    context.fail_if_problems()

    entries = [(prefix + n, substitute(v, env), o) for n, v, o, env in backbone]
    invariant_src = [(prefix + n, o) for n, o in expand_items(context, list(document.invariant), ("invariant",))]
    tied = [([prefix + n for n in g], o)
            for g, o in expand_items(context, [list(g) for g in document.tied], ("tied",))]
    if form == "canonical":
        entries, invariant_src = _overlay(context, entries, invariant_src, extra)
    given_steps = steps
    steps = expand_steps(context, document.canonicalize, prefix, ("canonicalize",)) if given_steps is None else []
    outputs_src: list[tuple[str, str, tuple]] = [(n, v, ("outputs", n)) for n, v in document.outputs.items()]
    head_steps: list[CanonStep] = []
    for head in heads:
        h = context.head_models[head]
        base = ("heads", head)
        entries += [(n, substitute(v, env), o)
                    for n, v, o, env in expand_keys(context, document.heads[head].tensors, base + ("tensors",), fixed)]
        invariant_src += expand_items(context, list(h.invariant), base + ("invariant",))
        tied += expand_items(context, [list(g) for g in h.tied], base + ("tied",))
        # a head's steps run before the backbone's: they untie what the backbone's steps would change
        if given_steps is None:
            head_steps += expand_steps(context, h.canonicalize, "", base + ("canonicalize",))
        outputs_src += [(n, v, base + ("outputs", n)) for n, v in h.outputs.items()]
    steps = head_steps + steps if given_steps is None else list(given_steps)

    tensors, attempted, invariant, outputs = bind_entries(context, entries, invariant_src, outputs_src)
    if form != "original":   # what the canonicalize steps consume need not be bound
        check_coverage(context, attempted, invariant)
    check_ties(context, tensors, invariant, tied, steps)
    if form != "original":
        check_unused_sites(context)
    context.fail_if_problems()
    return ResolvedSpec(context.spec, context.dims, prefix, heads, context.sites, tensors, set(invariant),
                        [g for g, _ in tied], steps, outputs)


def _choose_prefix(context: ResolveContext, names: list[str]) -> str:
    """The prefix (of the spec's 'prefix' list) under which the model has the backbone ``names``.

    When no prefix fits all, the best one is taken if it misses at most half of the names (each
    missing name is then reported where it is written); missing more, the spec is probably the
    wrong one for the model, which is reported once instead of name by name.
    """
    document, state = context.document, context.state
    if not document.prefix:
        context.problem(("prefix",), "'prefix' lists no prefix", "write prefix: [\"\"] (or leave it out) for none")
        context.fail_if_problems()
    best: tuple[str, list[str]] | None = None
    for prefix in document.prefix:
        missing = [n for n in names if prefix + n not in state]
        if not missing:
            return prefix
        if best is None or len(missing) < len(best[1]):
            best = (prefix, missing)
    assert best is not None         # the prefix list is not empty (checked above)
    prefix, missing = best
    if 2 * len(missing) <= len(names) or not names:
        return prefix  # a few names are wrong: each is reported where it is written
    # most of the backbone is absent: the wrong spec for this model, or a wrong prefix
    shown = ", ".join(f"'{prefix + n}'" for n in missing[:3]) + (" ..." if len(missing) > 3 else "")
    first = prefix + missing[0]
    context.problem(("prefix",) if "prefix" in document.model_fields_set else ("tensors",),
                    f"{len(missing)} of the spec's {len(names)} tensors are not in the model: {shown}"
                    f"{suggest(first, state)}",
                    "is this the right spec for the model? `symdsl specs` lists specs and what they match; "
                    f"'prefix' lists alternative name prefixes (tried: {', '.join(repr(p) for p in document.prefix)})")
    context.fail_if_problems()
    return prefix


def _present_heads(context: ResolveContext) -> list[str]:
    """The heads whose tensors the model has (a head's tensors are all present or all absent).

    A head whose ``requires`` tensors are not all in the model, or one of whose ``unless``
    tensors is, does not apply: it is absent whatever tensors of its own the model has.
    """
    present = []
    for head, h in context.head_models.items():
        if not all(n in context.state for n in h.requires) or any(n in context.state for n in h.unless):
            continue
        names = [n for n, *_ in expand_keys(context, context.document.heads[head].tensors,
                                            ("heads", head, "tensors"), {"prefix": context.prefix})]
        names += [n for n, _ in expand_items(context, list(h.invariant), ("heads", head, "invariant"))]
        found = [n for n in names if n in context.state]
        if found and len(found) != len(names):
            missing = [n for n in names if n not in context.state]
            context.problem(("heads", head), f"head '{head}' is partly present: the model has {found[:3]} but not "
                            f"{missing[:3]}",
                            "a head's tensors must all exist in the model or none")
        elif found:
            present.append(head)
    return present


def _in_canonical_form(context: ResolveContext) -> bool:
    """Is the model already in the spec's canonical form? True when every tensor that only the
    ``canonical`` section names exists in it (under one of the prefixes)."""
    resolve_dims(context)
    document = context.document
    section = document.canonical
    assert section is not None, "only specs with a 'canonical' section have two forms"
    original = {n for n, *_ in expand_keys(context, document.tensors, ("tensors",))}
    original |= {n for n, _ in expand_items(context, list(document.invariant), ("invariant",)) if isinstance(n, str)}
    new = [n for n, *_ in expand_keys(context, section.tensors, ("canonical", "tensors"))]
    new += [n for n, _ in expand_items(context, list(section.invariant), ("canonical", "invariant"))
            if isinstance(n, str)]
    only = [n for n in new if n not in original]
    return bool(only) and any(all(p + n in context.state for n in only) for p in document.prefix)


def _overlay(context: ResolveContext, entries: list, invariant_src: list, extra: list) -> tuple[list, list]:
    """The canonical form's backbone entries: those of 'tensors'/'invariant' whose tensors survive
    canonicalization, then the 'canonical' section's, which take precedence on the same name."""
    prefix = context.prefix
    new = [(prefix + n, substitute(v, env), o) for n, v, o, env in extra]
    canonical = context.document.canonical
    assert canonical is not None, "the overlay is made only for specs with a 'canonical' section"
    new_invariant = [(prefix + n, o) for n, o in expand_items(context, list(canonical.invariant),
                                                             ("canonical", "invariant"))]
    override = {n for n, *_ in new} | {n for n, _ in new_invariant}
    kept = [e for e in entries if e[0] in context.state and e[0] not in override]
    kept_invariant = [e for e in invariant_src if e[0] in context.state and e[0] not in override]
    return kept + new, kept_invariant + new_invariant
