"""Parameter-space symmetry groups: permutations, orthogonal maps, and friends.

>>> import torch
>>> from symdsl.groups import get_group_kind
>>> k = get_group_kind("permutation")
>>> k.apply(k.inverse(torch.tensor([1, 2, 0])), torch.tensor([1.0, 2.0, 3.0]), dim=0)
tensor([3., 1., 2.])
"""
from symdsl.groups.base import GroupKind
from symdsl.groups.registry import BUILTIN_GROUP_KINDS, BUILTIN_KINDS, get_group_kind

__all__ = ["GroupKind", "BUILTIN_GROUP_KINDS", "BUILTIN_KINDS", "get_group_kind"]
