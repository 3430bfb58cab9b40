"""``symdsl.barrier``: the loss along the straight line between A and B, before and after alignment."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from .. import distributed
from ..errors import UsageError
from ..evaluate import Barrier, Curve, barrier as barrier_of, loss_curve
from ..plugins import default_registries
from ..registry import Registries
from ..spec.load import Spec
from .align import align
from .alignment import Alignment
from .pipeline import dataset_for, matcher_options


@dataclass
class BarrierReport:
    """Curves and barriers of the vanilla path and the aligned one (``curves[label]``, ``barriers[label]``)."""

    alignment: Alignment
    curves: dict[str, Curve] = field(default_factory=dict)
    barriers: dict[str, Barrier] = field(default_factory=dict)
    barriers_mean: dict[str, Barrier] = field(default_factory=dict)   # the git re-basin definition

    def record(self) -> dict[str, Any]:
        return {"alignment": self.alignment.record(),
                "curves": {label: {**curve.to_dict(), "barrier": self.barriers[label].to_dict(),
                                   "barrier_mean": self.barriers_mean[label].to_dict()}
                           for label, curve in self.curves.items()}}


def barrier(model_a: torch.nn.Module, model_b: torch.nn.Module, data, spec: Spec | str | None = None,
            matcher: str = "weight", *, points: int = 11, split: str = "test", max_batches: int | None = None,
            seed: int = 0, device=None, verify: bool = True, progress=None,
            inputs: Mapping[str, Sequence[int]] | None = None, registries: Registries | None = None,
            autocast: str | None = None, **options: Any) -> BarrierReport:
    """Align B to A with ``matcher`` and measure the loss barrier of the vanilla and the aligned path on ``data``.

    Barrier (the paper's definition): max over the ``points`` grid of the loss of
    ``lam * A + (1 - lam) * B`` above the endpoints' straight line; ``barriers_mean`` holds the
    max-minus-mean-of-endpoints variant. Architecture-changing specs are allowed here; ``verify``
    and ``inputs`` as in :func:`symdsl.align`. ``autocast`` ("bfloat16", "float16") evaluates the curves with
    the forward passes in that dtype (learned matching takes its own ``autocast`` option).

    Under ``torchrun`` (``symdsl.distributed``) every process calls this with the same arguments:
    learned matching trains data-parallel and each curve point is evaluated on shards of the
    split, its sums reduced over the processes; every process returns the same report.
    """
    distributed.init_from_env(device)
    device = distributed.local_device(device)
    registries = registries or default_registries()
    options = matcher_options(matcher, options, registries)      # before the data is read
    dataset = dataset_for(data, registries)
    if dataset is None:
        raise UsageError("a barrier is measured on data: pass data ('digits', 'text:PATH', a symdsl.data.Dataset ...)")
    alignment = align(model_a, model_b, spec, matcher, data=dataset, seed=seed, device=device, standard=False,
                      verify=verify, progress=progress, inputs=inputs, registries=registries, **options)
    prepared = alignment.prepared
    report = BarrierReport(alignment)
    for label, state_b in (("vanilla", prepared.states[1]), (f"{matcher} matching", alignment.aligned_b)):
        step = (lambda done, total, label=label: progress(f"curve: {label}", done, total)) if progress else None
        curve = loss_curve(prepared.models[0], prepared.states[0], state_b, dataset, points=points, split=split,
                           max_batches=max_batches, progress=step, autocast=autocast)
        report.curves[label] = curve
        report.barriers[label] = barrier_of(curve)
        report.barriers_mean[label] = barrier_of(curve, definition="mean")
    return report
