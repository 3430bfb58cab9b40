"""``symdsl.check`` and ``symdsl.infer``: validate a spec against a model, or draft one from its graph."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from ..check.numeric import DEFAULT_TOLERANCE, NumericReport, numeric_check
from ..check.static import StaticReport, static_check
from ..infer import Draft, infer_spec
from ..plugins import default_registries
from ..registry import Registries
from ..spec.inputs import with_input_shapes
from ..spec.load import Spec
from .pipeline import spec_for


@dataclass
class CheckReport:
    """The static (graph) and numeric (float64 invariance) reports of one spec on one model."""

    static: StaticReport | None
    numeric: NumericReport | None

    @property
    def ok(self) -> bool:
        return all(r.ok for r in (self.static, self.numeric) if r is not None)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "static": self.static and self.static.to_dict(),
                "numeric": self.numeric and self.numeric.to_dict()}


def check(spec: Spec | str | None = None, model: torch.nn.Module | None = None, *, static: bool = True,
          numeric: bool = True, seed: int = 0, tolerance: float = DEFAULT_TOLERANCE, backend: str = "auto",
          trust_code: bool = False, inputs: Mapping[str, Sequence[int]] | None = None,
          registries: Registries | None = None) -> CheckReport:
    """Check ``spec`` on ``model`` (default: the spec's own example model): traced graph and float64 invariance.

    ``spec`` may be None when ``model`` is given (the spec that matches its class). A spec file
    whose example is built by a ``factory`` needs ``trust_code=True`` (it imports and calls it).
    ``inputs`` sets the shapes of the spec's example inputs (``{"x": (1, 3, 32, 32)}``); by
    default they follow the model's configuration (its image size, channels, vocabulary).

    >>> import symdsl
    >>> symdsl.check("hf-gpt2").ok
    True
    """
    registries = registries or default_registries()
    if spec is None and model is None:
        raise ValueError("check needs a spec, a model, or both")
    spec = with_input_shapes(spec_for(spec, model or torch.nn.Module(), registries, trust_code=trust_code),
                             inputs or {})
    return CheckReport(static_check(spec, model, registries=registries, backend=backend, seed=seed) if static else None,
                       numeric_check(spec, model, registries=registries, seed=seed, tolerance=tolerance)
                       if numeric else None)


def infer(model: torch.nn.Module, *, registries: Registries | None = None, **options: Any) -> Draft:
    """Draft a spec for ``model`` from its traced graph (``draft.text`` is the YAML).

    ``options`` go to :func:`symdsl.infer.infer_spec` (``factory``, ``timm_name``, ``config``,
    ``inputs``, ``name``, ``backend``, ``seed``).

    >>> import symdsl, torch
    >>> mlp = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> draft = symdsl.infer(mlp, factory="mymodels:mlp")     # factory: how `symdsl check` rebuilds it
    >>> [(s.key, s.group) for s in draft.sites]
    [('mlp', 'permutation')]
    """
    return infer_spec(model, registries=registries or default_registries(), **options)
