"""Expanding and checking a spec's 'canonicalize' steps against the canonicalizers and the model."""
from __future__ import annotations

from typing import Any

from ..errors import suggest
from .binding import CanonStep
from .context import ResolveContext
from .expand import check_template
from .template import expand_list


def expand_steps(context: ResolveContext, steps: list[dict], prefix: str, origin: tuple) -> list[CanonStep]:
    """The concrete steps of one 'canonicalize' list (templates expanded, names under ``prefix``).

    A step with a problem might have been an 'untie', so the tie check is skipped
    (``context.ties_incomplete``) rather than blaming ties the step would have declared.

    >>> import torch
    >>> from symdsl.plugins import load
    >>> from symdsl.spec import load_spec_text
    >>> from symdsl.spec.config import resolve_dims
    >>> spec = load_spec_text("symdsl: 1\\nname: tied\\n")
    >>> net = torch.nn.Sequential(torch.nn.Embedding(5, 3), torch.nn.Linear(3, 5, bias=False))
    >>> context = ResolveContext(spec, net, net.state_dict(), {}, load())
    >>> resolve_dims(context)
    >>> [step.name for step in expand_steps(context, [{"untie": ["0.weight", "1.weight"]}], "", ("canonicalize",))]
    ['untie']
    >>> expand_steps(context, [{"untei": ["0.weight", "1.weight"]}], "", ("canonicalize",))
    []
    >>> context.problems[0].message, context.ties_incomplete
    ("unknown canonicalizer 'untei'; did you mean 'untie'?", True)
    """
    out = []
    for index, step in enumerate(steps):
        path = origin + (index,)
        ok_before = len(context.problems)
        out += _expand_step(context, step, prefix, path)
        if len(context.problems) > ok_before:
            context.ties_incomplete = True  # the step might have been an 'untie'
    return out


def _expand_step(context: ResolveContext, step: Any, prefix: str, path: tuple) -> list[CanonStep]:
    """One step's calls (a template step expands to one per value of its variables)."""
    if not isinstance(step, dict) or len(step) != 1:
        context.problem(path, "a canonicalize step is a mapping with one key, the canonicalizer name",
                        "e.g. - untie: [lm_head.weight, transformer.wte.weight]")
        return []
    (name, args), = step.items()
    try:
        canon = context.canonicalizers[name]
    except KeyError:
        known = context.canonicalizers
        context.problem(path + (name,), f"unknown canonicalizer '{name}'{suggest(str(name), known)}",
                        f"known canonicalizers: {', '.join(sorted(known))}")
        return []
    path = path + (name,)
    fields = getattr(getattr(canon, "Args", None), "model_fields", None)
    if fields is not None:
        allowed = ", ".join(fields)
        if isinstance(args, dict):
            unknown = [k for k in args if k not in fields]
            for key in unknown:
                context.problem(path + (key,), f"{name}: unknown argument '{key}'{suggest(str(key), fields)}",
                                f"arguments of {name}: {allowed}")
            if unknown:
                return []
        elif not (isinstance(args, list) and "names" in fields):
            takes = "a list of names or a mapping" if "names" in fields else "a mapping"
            context.problem(path, f"{name} takes {takes} of arguments ({allowed}), got {type(args).__name__} {args!r}",
                            f"e.g. - {name}: {{{', '.join(f'{f}: ...' for f in fields)}}}")
            return []
    if not check_template(context, args, path):
        return []
    out: list[CanonStep] = []
    absent: dict[str, list[str]] = {}
    for concrete in expand_list([args], context.ranges):
        try:
            prepared = canon.prepare(concrete, prefix)
        except ValueError as exc:
            context.problem(path, str(exc))
            continue
        for field, item in _unknown_step_names(context, canon, prepared):
            absent.setdefault(field, []).append(item)
        site = getattr(prepared, "site", None)
        if isinstance(site, str) and site not in context.sites:
            context.problem(path + (("site",) if isinstance(args, dict) else ()),
                            f"{name}: site '{site}' is not declared{suggest(site, context.sites)}")
        out.append(CanonStep(name, prepared, path, canon))
    # one problem per field, however many expansions name something absent
    for field, items in absent.items():
        more = f" (and {len(items) - 1} more from this step)" if len(items) > 1 else ""
        names = list(context.state) + sorted(context.module_names())
        context.problem(path + ((field,) if isinstance(args, dict) else ()),
                        f"{name}: '{items[0]}' ({field}) is neither a tensor nor a module of the model"
                        f"{suggest(items[0], names)}{more}",
                        f"names here are looked up under the prefix '{prefix}'" if prefix else "")
    return out


def _unknown_step_names(context: ResolveContext, canon, args) -> list[tuple[str, str]]:
    """(field, name) for each name in a step's arguments that is neither a tensor nor a module of the model."""
    if getattr(canon, "changes_architecture", False) or context.form == "canonical":
        return []  # such a step may name what it creates; on a canonical model the names are gone
    found = []
    for field in getattr(canon, "name_fields", ()):
        value = getattr(args, field, None)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and item not in context.state and item not in context.module_names():
                found.append((field, item))
    return found
