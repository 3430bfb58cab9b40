"""The task loss of a weighted combination of endpoint models, each moved by its trainable transform.

theta(w) = sum_i w_i * act(g_i, theta_i), evaluated functionally (``torch.func.functional_call``)
on one template model: the endpoints stay frozen, nothing is copied into the model, and the
loss is differentiable in the parameters of every g_i.

>>> from symdsl.plugins import load
>>> import torch
>>> from symdsl.spec import load_spec_text, resolve
>>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
>>> spec = load_spec_text('symdsl: 1\\nname: m\\nsites: {u: {group: permutation, size: 4}}\\n'
...                       'tensors: {0.weight: "u _", 0.bias: u, 2.weight: "_ u\\'"}\\ninvariant: [2.bias]\\n')
>>> r = resolve(spec, model, registries=load())
>>> path = PathLoss(model, r, [model.state_dict(), model.state_dict()], "classification")
>>> x, y = torch.randn(5, 3), torch.tensor([0, 1, 0, 1, 1])
>>> mixed = float(path.loss([0.3, 0.7], [None, None], x, y).detach())
>>> abs(mixed - float(torch.nn.functional.cross_entropy(model(x), y).detach())) < 1e-6
True
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

from ..evaluate.forward import autocast as autocast_context, batch_loss
from ..spec.binding import ResolvedSpec
from .dense_action import Pair, act_dense, dense_sites


class _Functional:
    """Calls ``model`` with ``state`` in place of its parameters and buffers."""

    def __init__(self, model: torch.nn.Module, state: Mapping[str, torch.Tensor]):
        self.model, self.state = model, state

    def __call__(self, *args, **kwargs):
        return torch.func.functional_call(self.model, dict(self.state), args, kwargs, tie_weights=False, strict=False)

    @property
    def forward(self):
        # the wrapped model's forward: evaluation reads its signature to pass the inputs the way it takes them
        return self.model.forward


class PathLoss:
    """Loss of sum_i w_i act(g_i, theta_i) on a batch; endpoints are detached copies of ``states``."""

    def __init__(self, model: torch.nn.Module, resolved: ResolvedSpec, states: Sequence[Mapping[str, torch.Tensor]],
                 task: str, *, autocast: str | None = None):
        # autocast ("bfloat16", "float16"): the model's forward in that dtype; the combination of the
        # moved endpoints (the group action) stays in the states' own precision
        self.model, self.resolved, self.task, self.autocast = model, resolved, task, autocast
        self.states = [{k: v.detach() for k, v in s.items()} for s in states]
        self.sites = dense_sites(resolved)
        self.bound = [name for name in self.states[0] if name in resolved.tensors]

    def combine(self, weights: Sequence[float], pairs: Sequence[Mapping[str, Pair] | None]) -> dict[str, torch.Tensor]:
        """The state dict sum_i w_i act(g_i, theta_i); ``pairs[i]`` None means model i is not moved."""
        moved = [act_dense(self.resolved, state, p, self.sites, self.bound) if p else {}
                 for state, p in zip(self.states, pairs)]
        out = {}
        for key, first in self.states[0].items():
            if not first.is_floating_point():
                out[key] = first
                continue
            out[key] = sum(w * m.get(key, state[key]) for w, m, state in zip(weights, moved, self.states))
        return out

    def loss(self, weights, pairs, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the combined model on one batch (differentiable)."""
        state = self.combine(weights, pairs)
        with autocast_context(inputs.device, self.autocast):
            return batch_loss(_Functional(self.model, state), self.task, inputs, targets)
