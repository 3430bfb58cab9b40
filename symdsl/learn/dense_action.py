"""A differentiable action: every site's element as a dense ``(primal, dual)`` pair of matrices.

The action engine (:mod:`symdsl.act.engine`) applies permutations by indexing, which has no
gradient. Learned matching needs d(act(g, theta))/d(parameters of g), so here every site acts
through dense matrices: axes bound to ``site`` are contracted with the primal matrix, axes bound
to ``site'`` with the dual one. The same engine code walks the bindings, so the result equals
:func:`symdsl.act.act_state_dict` exactly when the matrices are the elements' own.

>>> from symdsl.plugins import load
>>> import torch
>>> from symdsl.spec import load_spec_text, resolve
>>> spec = load_spec_text('symdsl: 1\\nname: t\\nsites: {h: {group: permutation, size: 3}}\\n'
...                       'tensors: {weight: "h _", bias: h}\\n')
>>> r = resolve(spec, torch.nn.Linear(2, 3), registries=load())
>>> p = torch.eye(3)[[2, 0, 1]]
>>> act_dense(r, {"weight": torch.arange(6.).reshape(3, 2)}, {"h": (p, p)})["weight"]
tensor([[4., 5.],
        [0., 1.],
        [2., 3.]])
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import torch

from ..act.engine import act_tensor
from ..act.pairs import PAIR, pair
from ..spec.binding import ResolvedSpec

Pair = tuple[torch.Tensor, torch.Tensor]


def dense_sites(resolved: ResolvedSpec) -> dict:
    """The spec's sites with every kind replaced by the pair kind (cache it per spec)."""
    return {name: dataclasses.replace(site, kind=PAIR) for name, site in resolved.sites.items()}


def act_dense(resolved: ResolvedSpec, state: Mapping[str, torch.Tensor], pairs: Mapping[str, Pair],
              sites: dict | None = None, names=None) -> dict[str, torch.Tensor]:
    """Every bound tensor of ``state`` (or only ``names``) moved by the dense pairs; differentiable.

    Sites missing from ``pairs`` act as the identity. Unbound tensors are returned unchanged.
    """
    sites = sites if sites is not None else dense_sites(resolved)
    names = state.keys() if names is None else names
    stacked = {site: pair(primal, dual) for site, (primal, dual) in pairs.items()}   # (..., 2, n_out, n_in)
    out = {}
    for name in names:
        binding = resolved.tensors.get(name)
        out[name] = act_tensor(state[name], binding, stacked, sites) if binding else state[name]
    return out
