"""Completeness rules: every tensor bound or invariant, every site used, ties declared as they are."""
from __future__ import annotations

import re
from typing import Mapping

import torch

from ..errors import suggest
from .binding import CanonStep, SiteDef, TensorBinding
from .context import ResolveContext
from .template import substitute


def detect_ties(state: Mapping[str, torch.Tensor]) -> list[list[str]]:
    """Groups of state-dict names that share one storage (tied weights).

    Tensors without data (device ``meta``) all report storage address 0, so for them only the very
    same tensor object counts as shared (``state_dict(keep_vars=True)`` keeps tied parameters identical).

    >>> net = torch.nn.Sequential(torch.nn.Embedding(5, 3), torch.nn.Linear(3, 5, bias=False))
    >>> detect_ties(net.state_dict())
    []
    >>> net[1].weight = net[0].weight
    >>> detect_ties(net.state_dict())
    [['0.weight', '1.weight']]
    """
    groups: dict[tuple, list[str]] = {}
    for name, tensor in state.items():
        if tensor.numel() == 0:
            continue
        if tensor.device.type == "meta":
            key: tuple = ("meta", id(tensor))
        else:
            key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
                   tuple(tensor.stride()))
        groups.setdefault(key, []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def check_coverage(context: ResolveContext, tensors, invariant) -> None:
    """Report every model tensor that is neither in ``tensors`` (names bound) nor ``invariant``."""
    # entries skipped for a template error would have covered the names they match: no follow-up errors
    skipped = []
    for section, text, fixed in context.dropped:
        if section[-1] in ("tensors", "invariant"):
            name = substitute(text, fixed) if section[0] == "heads" else context.prefix + text
            parts = re.split(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}", name)
            skipped.append(re.compile(".+".join(re.escape(p) for p in parts)))
    missing = [n for n in context.state if n not in tensors and n not in invariant
               and not any(r.fullmatch(n) for r in skipped)]
    canonical = context.form == "canonical"
    for name in missing:
        if canonical:
            context.problem(("canonical", "tensors"), f"tensor '{name}' {tuple(context.state[name].shape)} of the "
                            "canonical form (after the canonicalize steps) is neither bound nor declared invariant",
                            f"add '{name}' under 'canonical: tensors' with an axis pattern, or under "
                            "'canonical: invariant' if no symmetry touches it")
            continue
        context.problem(("tensors",), f"model tensor '{name}' {tuple(context.state[name].shape)} is neither bound "
                        "nor declared invariant", f"add '{name}' under 'tensors' with an axis pattern, "
                        "or under 'invariant' if no symmetry touches it")


def check_unused_sites(context: ResolveContext) -> None:
    """Report sites no tensor pattern names (only on a spec with no other problem: a failed
    binding leaves its sites unused, and that would be a follow-up error)."""
    for name, site in context.sites.items():
        if name not in context.used_sites and not context.problems:
            context.problem(site.origin, f"site '{name}' is declared but no tensor uses it",
                            "bind it in some tensor pattern, or remove it")


def check_ties(context: ResolveContext, tensors: Mapping[str, TensorBinding], invariant: Mapping[str, tuple],
               tied: list[tuple[list[str], tuple]], steps: list[CanonStep]) -> None:
    """The spec's tie groups ('tied', or untied by an 'untie' step) must be exactly the model's
    shared parameters, and the tensors of one group must transform alike."""
    actual = detect_ties(context.state)
    declared = [set(g) for g, _ in tied] + [set(s.args.names) for s in steps if s.name == "untie"]
    # untie gives every name but its last its own copy; the names it leaves out stay one tensor
    # (T5: lm_head untied from shared, which stays tied to both stacks' embed_tokens)
    copies = {n for s in steps if s.name == "untie" for n in s.args.names[:-1]}
    for group in actual if not context.ties_incomplete else []:
        rest = set(group) - copies
        covered = any(set(group) <= d for d in declared) or \
            (rest != set(group) and (len(rest) <= 1 or any(rest <= d for d in declared)))
        if not covered:
            where = next((tensors[n].origin for n in group if n in tensors),
                         next((invariant[n] for n in group if n in invariant), ("tied",)))
            context.problem(where, f"tensors {group} are one shared parameter in the model but the spec does not say so",
                            "add them as one group under 'tied' (they must transform alike), "
                            "or 'untie' them in 'canonicalize'")
    for group, origin in tied:
        missing = [n for n in group if n not in context.state]
        if missing:
            context.problem(origin, f"tied tensor '{missing[0]}' is not in the model{suggest(missing[0], context.state)}")
            continue
        if len(set(group)) < 2:
            context.problem(origin, f"a tie group needs at least two different names, got {group}")
            continue
        if not any(set(group) <= set(a) for a in actual):
            context.problem(origin, f"tensors {group} are declared tied but are separate parameters in the model",
                            "remove this group from 'tied'")
            continue
        bindings = [tensors[n] for n in group if n in tensors]
        moving = [b for b in bindings if b.sites()]
        fixed = [n for n in group if n in invariant]
        if moving and fixed:
            context.problem(origin, f"tied tensors '{moving[0].name}' ({moving[0].pattern!r}) and '{fixed[0]}' "
                            "(invariant) would transform differently",
                            "one shared parameter transforms once: bind every name of the group alike")
        for other in bindings[1:]:
            if not _same_action(bindings[0], other, context.sites):
                context.problem(other.origin, f"tied tensors '{bindings[0].name}' ({bindings[0].pattern!r}) and "
                                f"'{other.name}' ({other.pattern!r}) would transform differently",
                                "tied tensors need the same sites per axis (variance may differ only on "
                                "permutation/orthogonal sites)")


def _same_action(a: TensorBinding, b: TensorBinding, sites: Mapping[str, SiteDef]) -> bool:
    """Do two bindings move their tensor alike? Variance may differ only on self-dual sites."""
    if len(a.axes) != len(b.axes):
        return False
    for x, y in zip(a.axes, b.axes):
        if len(x.parts) != len(y.parts) or x.nest != y.nest:
            return False
        for p, q in zip(x.parts, y.parts):
            if len(p) != len(q):
                return False
            for f, g in zip(p, q):
                if (f.site, f.size) != (g.site, g.size):
                    return False
                if f.site and f.dual != g.dual and not sites[f.site].kind.self_dual:
                    return False
    return True
