"""Group kinds by name: the built-in ones, plus any a plugin registers."""
from __future__ import annotations

from symdsl.errors import suggest
from symdsl.groups.base import GroupKind
from symdsl.plugins.lazy import LazyRegistry
from symdsl.groups.invertible import Invertible
from symdsl.groups.orthogonal import Orthogonal
from symdsl.groups.permutation import Permutation
from symdsl.groups.semi_permutation import SemiPermutation
from symdsl.groups.stiefel import Stiefel

# filled by plugins: the built-in kinds below are contributed by symdsl_builtins' hook
GROUP_KINDS: dict[str, GroupKind] = LazyRegistry("group kind")
BUILTIN_KINDS = (Permutation, SemiPermutation, Orthogonal, Stiefel, Invertible)


def register_group_kind(kind: GroupKind) -> GroupKind:
    """Add a kind under ``kind.name``; ``ValueError`` if that name is taken.

    Returns the kind, so it can be used on one line.

    >>> from symdsl.groups import GroupKind
    >>> register_group_kind(GROUP_KINDS["orthogonal"])
    Traceback (most recent call last):
    ...
    ValueError: group kind 'orthogonal' is already registered
    """
    if not isinstance(kind, GroupKind):
        raise TypeError(f"expected a GroupKind instance, got {type(kind).__name__}")
    if not kind.name:
        raise ValueError(f"{type(kind).__name__} has no name")
    if kind.name in GROUP_KINDS:
        raise ValueError(f"group kind {kind.name!r} is already registered")
    GROUP_KINDS[kind.name] = kind
    return kind


def get_group_kind(name: str) -> GroupKind:
    """The kind called ``name``; ``KeyError`` with a suggestion if unknown.

    >>> get_group_kind("orthogonal").square
    True
    >>> get_group_kind("orthogonl")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    KeyError: "unknown group kind 'orthogonl'; did you mean 'orthogonal'? known: invertible, ..."
    """
    try:
        return GROUP_KINDS[name]
    except KeyError:
        known = ", ".join(sorted(GROUP_KINDS))
        hint = suggest(str(name), GROUP_KINDS) or ";"  # "; did you mean 'x'?"
        raise KeyError(f"unknown group kind {name!r}{hint} known: {known}") from None

