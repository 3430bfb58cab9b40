"""Linear combinations of state dicts: two-model interpolation and N-model weighted averages."""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch

from ..errors import UsageError

State = Mapping[str, torch.Tensor]


def interpolate(state_a: State, state_b: State, lam: float) -> dict[str, torch.Tensor]:
    """``lam * A + (1 - lam) * B`` for every floating tensor; other entries (int buffers) come from A.

    ``lam = 1`` returns copies of A's tensors and ``lam = 0`` of B's, bit for bit. The key sets
    and shapes must agree; a mismatch names the key.

    >>> a, b = {"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([3.0, 6.0])}
    >>> interpolate(a, b, 0.25)["w"]
    tensor([2.5000, 5.0000])
    """
    return weighted_average([state_a, state_b], [lam, 1.0 - lam], names=["A", "B"])


def weighted_average(states: Sequence[State], weights: Sequence[float] | None = None, *,
                     names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """``sum_i weights[i] * states[i]`` for floating tensors (weights default to uniform and must
    sum to 1); non-floating entries come from the first state. A weight vector that is one at
    ``i`` and zero elsewhere returns copies of state ``i`` exactly.

    Sums are formed in at least float32 and cast back, so half-precision states do not lose the
    small contributions.

    >>> s = [{"w": torch.tensor([0.0])}, {"w": torch.tensor([3.0])}, {"w": torch.tensor([6.0])}]
    >>> weighted_average(s)["w"]
    tensor([3.])
    """
    if not states:
        raise UsageError("weighted_average needs at least one state dict")
    names = list(names) if names is not None else [f"state {i}" for i in range(len(states))]
    weights = [1.0 / len(states)] * len(states) if weights is None else [float(w) for w in weights]
    if len(weights) != len(states):
        raise UsageError(f"{len(weights)} weights for {len(states)} state dicts")
    if not math.isclose(sum(weights), 1.0, abs_tol=1e-6):
        raise UsageError(f"weights sum to {sum(weights):g}, not 1; divide them by their sum for an average")
    _check_compatible(states, names)
    vertex = [i for i, w in enumerate(weights) if w != 0.0]
    if len(vertex) == 1 and weights[vertex[0]] == 1.0:
        chosen = states[vertex[0]]
        return {key: _copy(chosen[key]) if _is_float(chosen[key]) else _copy(states[0][key]) for key in states[0]}
    out = {}
    for key, first in states[0].items():
        if not _is_float(first):
            out[key] = _copy(first)
            continue
        work = torch.promote_types(first.dtype, torch.float32)
        total = sum(w * state[key].to(work) for w, state in zip(weights, states))
        out[key] = total.to(first.dtype)
    return out


def _check_compatible(states: Sequence[State], names: Sequence[str]) -> None:
    reference = states[0]
    for name, state in zip(names[1:], states[1:]):
        missing = [k for k in reference if k not in state]
        extra = [k for k in state if k not in reference]
        if missing or extra:
            which, key = ("missing from", missing[0]) if missing else ("only in", extra[0])
            raise UsageError(f"state dicts differ: key '{key}' is {which} {name} "
                             f"({len(missing)} missing, {len(extra)} extra compared with {names[0]})")
        for key, tensor in reference.items():
            other = state[key]
            if isinstance(tensor, torch.Tensor) and isinstance(other, torch.Tensor) and tensor.shape != other.shape:
                raise UsageError(f"state dicts differ at '{key}': shape {tuple(tensor.shape)} in {names[0]} "
                                 f"but {tuple(other.shape)} in {name}")


def _is_float(value) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point()


def _copy(value):
    return value.detach().clone() if isinstance(value, torch.Tensor) else value
