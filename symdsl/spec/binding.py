"""Resolved forms: what a spec means for one concrete model (sizes known, templates expanded)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..groups import GroupKind


@dataclass(frozen=True)
class SiteDef:
    """A concrete site: its group kind, sizes and (optionally) what it is repeated per."""

    name: str
    kind: GroupKind
    size: int
    size_in: int
    per: str | None = None        # a permutation site or a dimension name
    per_size: int | None = None   # number of independent elements when ``per`` is set
    options: dict = field(default_factory=dict)
    origin: tuple = ()            # key path of the (template) entry in the spec file

    @property
    def batch(self) -> tuple[int, ...]:
        """Leading batch shape of this site's group elements."""
        return (self.per_size,) if self.per and self.per_size is not None else ()


@dataclass(frozen=True)
class BoundFactor:
    """One factor of one axis: its size and, when bound, the site and variance."""

    size: int
    site: str | None = None
    dual: bool = False
    dim: str | None = None        # dimension name when the factor is an unbound named dim


@dataclass(frozen=True)
class BoundAxis:
    """One tensor axis: consecutive parts (several for a fused split), each a row-major factor list.

    ``nest`` (see :class:`symdsl.spec.pattern.AxisPattern`) groups parts into blocks that share
    their leading factors, a split nested in a composite (``(heads [qk | qkp])``); empty for a
    plain split. Every part lists its shared factors too, so a part's factors always describe
    its own entries; :mod:`symdsl.spec.views` cuts a tensor into its parts.
    """

    parts: tuple[tuple[BoundFactor, ...], ...]
    nest: tuple[tuple[int, int], ...] = ()

    @property
    def size(self) -> int:
        total = 0
        for part in self.parts:
            n = 1
            for f in part:
                n *= f.size
            total += n
        return total

    @property
    def bound(self) -> bool:
        return any(f.site for part in self.parts for f in part)


@dataclass(frozen=True)
class TensorBinding:
    """How every axis of one named tensor transforms."""

    name: str
    axes: tuple[BoundAxis, ...]
    pattern: str
    origin: tuple = ()

    def sites(self) -> set[str]:
        return {f.site for a in self.axes for p in a.parts for f in p if f.site}


@dataclass
class CanonStep:
    """One canonicalizer call with concrete (expanded, prefixed) arguments."""

    name: str
    args: Any
    origin: tuple = ()
    canonicalizer: Any = None      # the Canonicalizer object the name resolved to


@dataclass
class ResolvedSpec:
    """A spec bound to one model configuration. Build with :func:`symdsl.spec.resolve`."""

    spec: Any                      # the loaded Spec
    dims: dict[str, int]
    prefix: str
    heads: list[str]
    sites: dict[str, SiteDef]
    tensors: dict[str, TensorBinding]
    invariant: set[str]
    tied: list[list[str]]
    canonicalize: list[CanonStep]
    outputs: dict[str, TensorBinding]

    def site_tensors(self, site: str) -> list[str]:
        """Names of tensors with at least one axis factor bound to ``site``."""
        return [n for n, b in self.tensors.items() if site in b.sites()]

    def children(self, site: str) -> list[str]:
        """Sites declared ``per`` this one."""
        return [s.name for s in self.sites.values() if s.per == site]
