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
                     dtype=torch.float64, device=None) -> dict[str, torch.Tensor]:
    """A random element for each named site (all sites by default), reproducible from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    names = list(resolved.sites) if sites is None else list(sites)
    out = {}
    for name in names:
        site = resolved.sites[name]
        g = site.kind.random(site.size, site.size_in, site.batch, options=site.options, generator=generator, dtype=dtype)
        out[name] = g.to(device) if device is not None else g
    return out
