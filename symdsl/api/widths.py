"""Width-heterogeneous alignment end to end: lift the narrow model, then match in the wide space.

The wide model is model A (the reference frame, lam = 1 on the path), the lifted narrow model
is model B. Learned matching samples lam, the wide model's weight, from :data:`LIFT_LAM`
(``U(0.2, 0.5)``) unless told otherwise: the interpolated models it trains on lean toward the
narrow model, whose function the lifted copy carries in a subspace of the wide stream.

>>> # result = align_widths(wide, narrow, matcher="weight")
>>> # curves = result.curves("digits")        # {"vanilla": Curve, "weight": Curve}
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch

from ..act import act_state_dict
from ..evaluate import Curve, loss_curve
from ..match import MatchResult
from ..plugins import default_registries
from ..registry import Registries
from ..spec.load import Spec
from ..width.lift import Lifted, lift
from .pipeline import Prepared, match, matcher_options, prepare, spec_for

LIFT_LAM = "uniform:0.2,0.5"
"""Default lambda sampler (the wide model's weight) for learned matching of a lifted pair."""


def lift_options(matcher: str, options: dict[str, Any]) -> dict[str, Any]:
    """The matcher options to use on a lifted pair: ``lam=LIFT_LAM`` added for learned matching
    unless the caller chose a ``lam``.

    >>> lift_options("learned", {}), lift_options("learned", {"lam": "uniform:0.4,0.6"}), lift_options("weight", {})
    ({'lam': 'uniform:0.2,0.5'}, {'lam': 'uniform:0.4,0.6'}, {})
    """
    if matcher == "learned" and "lam" not in options:
        return {**options, "lam": LIFT_LAM}
    return dict(options)


@dataclass
class WidthAlignment:
    """A lifted narrow model aligned to a wide one.

    ``prepared.models[0]`` / ``prepared.states[0]`` are the wide model's canonical copy,
    ``prepared.states[1]`` the lifted narrow state before matching (the vanilla endpoint),
    ``aligned`` the lifted state after matching, ``result`` the matcher's transform.
    """

    lifted: Lifted
    prepared: Prepared
    result: MatchResult
    aligned: dict[str, torch.Tensor]

    @property
    def wide_state(self) -> dict[str, torch.Tensor]:
        return self.prepared.states[0]

    @property
    def lifted_state(self) -> dict[str, torch.Tensor]:
        return self.prepared.states[1]

    def curves(self, dataset, *, points: int = 11, **options) -> dict[str, Curve]:
        """Loss curves in the wide space: ``"vanilla"`` (wide to lifted, no matching) and one
        named after the matcher (wide to aligned lifted). Options go to :func:`loss_curve`."""
        model = self.prepared.models[0]
        return {"vanilla": loss_curve(model, self.wide_state, self.lifted_state, dataset, points=points, **options),
                self.result.matcher: loss_curve(model, self.wide_state, self.aligned, dataset, points=points,
                                                **options)}

    def to_record(self) -> dict[str, Any]:
        """JSON-serialisable: the lift and the match."""
        return {"lift": self.lifted.to_record(), "match": self.result.to_record()}


def align_widths(wide: torch.nn.Module, narrow: torch.nn.Module, spec: Spec | str | None = None,
                 matcher: str = "weight", *, data=None, seed: int = 0, embedding: str = "identity",
                 device=None, progress=None, registries: Registries | None = None, **options) -> WidthAlignment:
    """Lift ``narrow`` into ``wide``'s configuration and align it to ``wide`` with ``matcher``.

    Built on :func:`symdsl.api.pipeline.prepare` / :func:`symdsl.api.pipeline.match` with the pair
    ``[wide, lifted]``; ``data`` is needed by data-driven matchers (``activation``, ``learned``),
    ``options`` go to the matcher (see :func:`lift_options` for the learned matcher's default lam).

    >>> from symdsl.data import load_dataset
    >>> from symdsl.experiments.train import small_vit
    >>> ds = load_dataset("digits")
    >>> wide, narrow = small_vit(ds, embed_dim=32, seed=0), small_vit(ds, embed_dim=16, num_heads=2, seed=1)
    >>> result = align_widths(wide, narrow, max_iter=1, invertible_steps=0)
    >>> result.aligned["cls_token"].shape, result.lifted.sites["heads.0"].copies.tolist()
    (torch.Size([1, 1, 32]), [0, 1, 0, 1])
    """
    registries = registries or default_registries()
    options = matcher_options(matcher, options, registries)
    spec = spec_for(spec, wide, registries)
    lifted = lift(narrow, wide, spec, registries=registries, seed=seed, embedding=embedding)
    dtype = next(wide.parameters()).dtype
    # the lift keeps the narrow model's dtype; the pair must share the wide one's (a copy: Lifted stays as built)
    model_b = lifted.model if next(lifted.model.parameters()).dtype == dtype else copy.deepcopy(lifted.model).to(dtype)
    prepared = prepare([wide, model_b], spec, device=device, registries=registries)
    result = match(prepared, 1, matcher, data=data, seed=seed, progress=progress, registries=registries,
                   **lift_options(matcher, options))
    aligned = act_state_dict(prepared.resolved, prepared.states[1], result.elements)
    return WidthAlignment(lifted, prepared, result, aligned)
