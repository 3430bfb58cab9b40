"""One trainable parametrisation per site, for learned matching.

Each group kind provides its own parametrisation (:meth:`symdsl.groups.GroupKind.parametrize`,
classes in :mod:`symdsl.groups.parametrizations` and next to each kind): straight-through
permutations and copy maps, Cayley rotations (that keep fixing 1 with ``preserve: ones``) and
embeddings, free invertible matrices. This module decides which one each site gets:
:class:`Fixed` holds an element that is not trained (a frozen site, or one that
``permutations_only`` leaves alone) so that it still acts in the dense action, and
:func:`parametrize_sites` builds one parametrisation per site of a resolved spec.

>>> from symdsl.groups.permutation import Permutation
>>> Fixed(torch.tensor([1, 0]), kind=Permutation()).dense()[0]
tensor([[0., 1.],
        [1., 0.]], dtype=torch.float64)
"""
from __future__ import annotations

from typing import Mapping

import torch

from ..errors import UsageError
from ..groups.parametrizations import Parametrization


class Fixed(Parametrization):
    """An element that is not trained: constant dense matrices, no parameters.

    >>> from symdsl.groups.permutation import Permutation
    >>> f = Fixed(torch.tensor([1, 0]), kind=Permutation())
    >>> f.dense()[0], list(f.parameters())
    (tensor([[0., 1.],
            [1., 0.]], dtype=torch.float64), [])
    """

    def __init__(self, g: torch.Tensor, *, kind, n_in: int | None = None, dtype=torch.float64):
        super().__init__()
        self.register_buffer("value", g.detach().clone())
        dense = (lambda m: m.to(dtype) if m.is_floating_point() else kind.to_matrix(m, dtype=dtype, n_in=n_in))
        self.register_buffer("primal", dense(g))
        self.register_buffer("dual_matrix", dense(kind.dual(g, n_in=n_in)))

    def dense(self):
        return self.primal, self.dual_matrix

    def element(self) -> torch.Tensor:
        return self.value.clone()


def parametrize_sites(resolved, start: Mapping[str, torch.Tensor], *, permutations_only: bool = False,
                      dtype=torch.float32, device=None, freeze=()) -> dict[str, Parametrization]:
    """site -> parametrisation starting at ``start[site]``, for every site of ``resolved``.

    Frozen sites become :class:`Fixed` at their starting element (so they still act). With
    ``permutations_only`` each site is learned as its kind's
    :meth:`~symdsl.groups.GroupKind.permutation_restriction` (an orthogonal site as permutation
    matrices), or kept :class:`Fixed` where the kind has none (invertible sites).
    A kind without ``parametrize`` is a UsageError naming the site and the fix.

    >>> from symdsl.plugins import load
    >>> from symdsl.spec import load_spec_text, resolve
    >>> from symdsl.act import identity_transform
    >>> spec = load_spec_text('symdsl: 1\\nname: t\\nsites: {h: {group: orthogonal, size: 3}}\\n'
    ...                       'tensors: {weight: "h _", bias: h}\\n')
    >>> r = resolve(spec, torch.nn.Linear(2, 3), registries=load())
    >>> sorted(type(p).__name__ for p in parametrize_sites(r, identity_transform(r)).values())
    ['CayleyOrthogonal']
    >>> sorted(type(p).__name__ for p in parametrize_sites(r, identity_transform(r), permutations_only=True).values())
    ['StraightThroughPermutation']
    """
    unknown = sorted(set(freeze) - set(resolved.sites))
    if unknown:
        raise UsageError(f"freeze names site(s) {unknown[:5]} that spec '{resolved.spec.name}' does not have; "
                         f"its sites: {', '.join(list(resolved.sites)[:8])} ...")
    params: dict[str, Parametrization] = {}
    for name, site in resolved.sites.items():
        g0 = start[name].to(device=device)
        if g0.is_floating_point():
            g0 = g0.to(dtype)
        kind, options = site.kind, site.options
        if permutations_only:
            # a restriction is used without options: it bakes in whatever the site's options asked for
            kind = site.kind.permutation_restriction(site.options)
            options = site.options if kind is site.kind else None
        if name in freeze or kind is None:
            params[name] = Fixed(g0, kind=site.kind, n_in=site.size_in, dtype=dtype).to(device)
            continue
        try:
            params[name] = kind.parametrize(g0, options=options, n_in=site.size_in).to(device)
        except NotImplementedError as exc:
            raise UsageError(f"site '{name}' (group {site.kind.name}) cannot be learned: {exc}; keep it at its "
                             f"starting element with --option freeze=[{name}]") from None
    return params


def trained_sites(params: Mapping[str, Parametrization]) -> list[str]:
    """The sites whose parametrisation has parameters (not :class:`Fixed`)."""
    return sorted(name for name, p in params.items() if any(True for _ in p.parameters()))
