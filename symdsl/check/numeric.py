"""Numeric invariance check: f(act(g, θ)) == f(θ) (or == act(g, f(θ)) for declared outputs).

Runs in float64 on a copy of the model: canonicalize, then for every site alone and for all
sites together, apply a random group element and compare outputs with the canonical model's.
The copy first gets kernels that run in float64 where the model offers a choice
(:func:`symdsl.models.kernels.use_exact_kernels`: a mixture of experts' batched experts); a model
that still cannot run in float64 is checked in the most precise dtype that runs, and says so.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch.func import functional_call

from ..act import act_outputs, act_state_dict, random_transform
from ..canon import canonicalize
from ..errors import SymdslError
from ..models.build import build_example, make_inputs, perturb_parameters, select_outputs
from ..models.kernels import use_exact_kernels
from ..spec.load import Spec
from ..spec.cache import resolve_cached
from ..registry import Registries
from ..spec.config import model_config
from ..spec.coverage import detect_ties
from .precision import CHECK_DTYPES, achievable_tolerance, lowest_precision, runs_in

DEFAULT_TOLERANCE = 1e-9


@dataclass
class SiteResult:
    """Result for one site (or ``"*"`` for all sites at once)."""

    site: str
    group: str
    max_abs_error: float
    relative_error: float
    ok: bool


@dataclass
class NumericReport:
    """What the numeric check measured; ``ok`` when every relative error is under ``tolerance``."""

    spec: str
    model: str
    tolerance: float
    canonicalize_error: float
    sites: list[SiteResult] = field(default_factory=list)
    requested_tolerance: float | None = None   # set when the model's own precision forced a looser one
    precision: str = "float64"                 # the least precise dtype the model computes in (run in float64)
    precision_source: str | None = None        # the torch function that first produced it
    notes: list[str] = field(default_factory=list)   # what the check changed to run (kernels, dtype)
    canonicalize_step: str | None = None       # the first canonicalize step that changed the function

    @property
    def ok(self) -> bool:
        return self.canonicalize_error < self.tolerance and all(s.ok for s in self.sites)

    @property
    def failed(self) -> list[SiteResult]:
        """Failed rows, including the all-sites row ``"*"``."""
        return [s for s in self.sites if not s.ok]

    @property
    def failed_sites(self) -> list[str]:
        return [s.site for s in self.sites if not s.ok and s.site != "*"]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        return data


def _relative(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[float, float]:
    worst_abs, worst_rel = 0.0, 0.0
    for key in b:
        diff = (a[key] - b[key]).abs().max().item()
        scale = max(b[key].abs().max().item(), 1e-300)
        worst_abs, worst_rel = max(worst_abs, diff), max(worst_rel, diff / scale)
    return worst_abs, worst_rel


def _breaking_step(spec: Spec, resolved, fresh, inputs, dtype, primary, extra, reference,
                   tolerance: float) -> str | None:
    """The first canonicalize step after which the outputs differ from the original model's: the
    steps are replayed one by one on a fresh copy (only when canonicalization failed)."""
    model = fresh().eval()
    use_exact_kernels(model)
    model = model.to(dtype)
    view = getattr(resolved, "original", resolved)
    source = spec.source
    for step in resolved.canonicalize:
        with torch.no_grad():
            step.canonicalizer.apply(model, step.args, view)
            _, error = _relative(select_outputs(model(**inputs), primary, extra), reference)
        if error >= tolerance:
            line, col = source.where(step.origin) if step.origin else (0, 0)
            where = f"{source.file}:{line}:{col}: " if step.origin else ""
            arguments = step.args.model_dump() if hasattr(step.args, "model_dump") else step.args
            return (f"{where}{step.name} {arguments} changes the model's outputs (relative error {error:.2e}): "
                    "a fold must name every layer that reads the norm's output (a reader left out sees the "
                    "unscaled values), and an untie every use of the shared weight")
    return None


def numeric_check(spec: Spec, model: torch.nn.Module | None = None, *, registries: Registries, seed: int = 0,
                  tolerance: float = DEFAULT_TOLERANCE, progress=None) -> NumericReport:
    """Check every site of ``spec`` on ``model`` (default: the spec's example) in float64.

    >>> from symdsl.plugins import load
    >>> from symdsl.spec.registry import find_spec
    >>> numeric_check(find_spec("hf-gpt2", load()), registries=load()).ok
    True
    """
    # a user's model is checked on a perturbed copy too: unit gains and zero biases must not hide a wrong binding
    given = model

    def fresh() -> torch.nn.Module:
        return build_example(spec, seed=seed) if given is None else perturb_parameters(copy.deepcopy(given), seed=seed)

    model = fresh()
    notes = use_exact_kernels(model)
    model = model.eval()
    resolved = resolve_cached(spec, model, registries)
    names = {**model_config(model), **resolved.dims}
    primary = spec.document.example.output if spec.document.example else None
    extra = list(resolved.outputs)

    def forward(dtype):
        return lambda: select_outputs(model(**make_inputs(spec, names, seed=seed, dtype=dtype)), primary, extra)

    # float64 first; a kernel without a float64 path (and no other choice) falls back to float32
    dtype, failures = runs_in(model, forward, CHECK_DTYPES)
    if dtype is None:
        shapes = "; ".join(f"{str(d).replace('torch.', '')}: {why}" for d, why in failures)
        raise SymdslError(f"{spec.file}: running {type(model).__name__} on example.inputs failed in every dtype "
                          f"the check can use ({shapes}); check example.inputs (or the shapes given by inputs=, --inputs)")
    for failed_dtype, why in failures:
        notes.append(f"{type(model).__name__} does not run in {str(failed_dtype).replace('torch.', '')} ({why}); "
                     f"checked in {str(dtype).replace('torch.', '')}, with the tolerance that precision allows")
    inputs = make_inputs(spec, names, seed=seed, dtype=dtype)

    def run(state=None) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            try:
                result = model(**inputs) if state is None else functional_call(model, state, args=(), kwargs=inputs)
            except Exception as exc:  # the model rejected the inputs: say which inputs, not where in torch
                shapes = ", ".join(f"{k}: {tuple(v.shape)}" for k, v in inputs.items())
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise SymdslError(f"{spec.file}: running {type(model).__name__} on example.inputs ({shapes}) failed: "
                                  f"{type(exc).__name__}: {first}; check example.inputs (or the shapes given by inputs=, "
                                  "--inputs)") from None
        return select_outputs(result, primary, extra)

    reference = run()
    canonicalize(model, resolved)
    canonical = run()
    _, canon_error = _relative(canonical, reference)
    # a model that casts to float32 inside (hand-written RMSNorm) cannot show a symmetry to 1e-9
    lowest, source = lowest_precision(run)
    effective = achievable_tolerance(tolerance, lowest)
    report = NumericReport(spec.name, type(model).__name__, effective, canon_error,
                           requested_tolerance=tolerance if effective != tolerance else None,
                           precision=str(lowest or dtype).replace("torch.", ""), precision_source=source, notes=notes)
    if canon_error >= effective:
        report.canonicalize_step = _breaking_step(spec, resolved, fresh, inputs, dtype, primary, extra, reference,
                                                   effective)
    state = dict(model.state_dict())
    # functional_call wants one entry per shared parameter: keep the first name of each tie
    for group in detect_ties(state):
        for alias in group[1:]:
            state.pop(alias)
    groups = [[name] for name in resolved.sites] + [list(resolved.sites)]
    for index, sites in enumerate(groups):
        elements = random_transform(resolved, sites, seed=seed + 1 + index, nontrivial=True)
        moved = run(act_state_dict(resolved, state, elements))
        expected = act_outputs(resolved, canonical, elements)
        abs_err, rel_err = _relative(moved, expected)
        last = index == len(groups) - 1
        label = "*" if last else sites[0]
        group = "all" if last else resolved.sites[sites[0]].kind.name
        report.sites.append(SiteResult(label, group, abs_err, rel_err, rel_err < effective))
        if progress is not None:
            progress(index + 1, len(groups))
    return report
