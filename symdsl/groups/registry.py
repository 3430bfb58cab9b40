"""The built-in group kinds by name (a constant table; plugin kinds reach the code through
:attr:`symdsl.registry.Registries.group_kinds`, which the built-in plugin fills from this one)."""
from __future__ import annotations

from types import MappingProxyType

from symdsl.errors import UnknownNameError, suggest
from symdsl.groups.base import GroupKind
from symdsl.groups.invertible import Invertible
from symdsl.groups.orthogonal import Orthogonal
from symdsl.groups.permutation import Permutation
from symdsl.groups.rotary import Rotary
from symdsl.groups.semi_permutation import SemiPermutation
from symdsl.groups.stiefel import Stiefel

BUILTIN_KINDS = (Permutation, SemiPermutation, Orthogonal, Stiefel, Invertible, Rotary)
BUILTIN_GROUP_KINDS = MappingProxyType({cls.name: cls() for cls in BUILTIN_KINDS})


def get_group_kind(name: str) -> GroupKind:
    """The built-in kind called ``name``; :class:`~symdsl.errors.UnknownNameError` (a ``KeyError``) if unknown.

    >>> get_group_kind("orthogonal").square
    True
    >>> get_group_kind("orthogonl")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    symdsl.errors.UnknownNameError: unknown group kind 'orthogonl'; did you mean 'orthogonal'? known: invertible, ...
    """
    try:
        return BUILTIN_GROUP_KINDS[name]
    except KeyError:
        known = ", ".join(sorted(BUILTIN_GROUP_KINDS))
        hint = suggest(str(name), BUILTIN_GROUP_KINDS) or ";"  # "; did you mean 'x'?"
        raise UnknownNameError(f"unknown group kind {name!r}{hint} known: {known}") from None
