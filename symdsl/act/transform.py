"""Transforms: a group element for each site of a resolved spec."""
from __future__ import annotations

from typing import Iterable

import torch

from ..spec.binding import ResolvedSpec


def identity_transform(resolved: ResolvedSpec, *, dtype=torch.float64, device=None) -> dict[str, torch.Tensor]:
    """The identity element of every site.

    >>> # elements = identity_transform(resolved); act_state_dict(resolved, sd, elements) == sd
    """
    return {name: site.kind.identity(site.size, site.size_in, site.batch, options=site.options, dtype=dtype, device=device)
            for name, site in resolved.sites.items()}


def random_transform(resolved: ResolvedSpec, sites: Iterable[str] | None = None, *, seed: int = 0,
                     dtype=torch.float64, device=None, nontrivial: bool = False) -> dict[str, torch.Tensor]:
    """A random element for each named site (all sites by default), reproducible from ``seed``.

    ``nontrivial``: redraw (a few times) an element that is the identity. A permutation of 2 is
    the identity half of the time, and a check that draws it tests nothing; a site whose group
    has no other element (size 1) keeps the identity.
    """
    generator = torch.Generator().manual_seed(seed)
    names = list(resolved.sites) if sites is None else list(sites)
    out = {}
    for name in names:
        site = resolved.sites[name]
        for _ in range(_REDRAWS if nontrivial else 1):
            g = site.kind.random(site.size, site.size_in, site.batch, options=site.options, generator=generator,
                                 dtype=dtype)
            if not nontrivial or not _is_identity(site, g):
                break
        out[name] = g.to(device) if device is not None else g
    return out


_REDRAWS = 16     # a group of 2 elements draws the identity 16 times in a row with probability 2^-16


def _is_identity(site, g: torch.Tensor) -> bool:
    identity = site.kind.identity(site.size, site.size_in, site.batch, options=site.options, dtype=g.dtype)
    return g.shape == identity.shape and bool(torch.equal(g, identity.to(g.device)))
