"""Leaf ``nn.Module`` calls of an fx graph, rewritten as functional ops with explicit params.

``torch.fx`` does not trace into torch's own modules: ``self.fc(x)`` stays one ``call_module``
node. The checker wants ``linear(x, weight, bias)`` whichever backend ran, so each known module
type becomes the functional call torch itself would make; unknown ones keep their inputs and
list their parameters by local name in ``kwargs``.
"""
from __future__ import annotations

import re
from typing import Callable

import torch
from torch import nn

from .capture_types import Ref

# (op, args, kwargs) in the source layout of the functional op; normalize_op finishes the job.
Call = tuple[str, tuple, dict]
ParamRef = Callable[[torch.Tensor | None], Ref | None]

_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
_ACTIVATIONS = {nn.Tanh: "tanh", nn.ReLU: "relu", nn.SiLU: "silu", nn.Sigmoid: "sigmoid"}


def _snake(name: str) -> str:
    """``"MultiheadAttention"`` -> ``"multihead_attention"``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def module_call(module: nn.Module, args: tuple, kwargs: dict, param: ParamRef) -> Call:
    """The functional form of ``module(*args, **kwargs)``; ``param(tensor)`` gives a tensor's Ref.

    >>> module_call(nn.Linear(2, 3, bias=False), (Ref("x"),), {}, lambda t: t is not None and Ref("w") or None)
    ('linear', (%x, %w, None), {})
    """
    x = args[0] if args else None
    if isinstance(module, nn.Linear):
        return "linear", (x, param(module.weight), param(module.bias)), {}
    if isinstance(module, nn.LayerNorm):
        return "layer_norm", (x, list(module.normalized_shape), param(module.weight), param(module.bias),
                              module.eps), {}
    if isinstance(module, nn.RMSNorm):
        return "rms_norm", (x, list(module.normalized_shape), param(module.weight), module.eps), {}
    if isinstance(module, nn.Embedding) and module.max_norm is None:
        return "embedding", (param(module.weight), x), {}
    if isinstance(module, nn.Conv2d) and module.padding_mode == "zeros":
        return "conv2d", (x, param(module.weight), param(module.bias), module.stride, module.padding,
                          module.dilation, module.groups), {}
    if isinstance(module, _DROPOUTS):
        return "dropout", (x, module.p, module.training), {}
    if isinstance(module, nn.Identity):
        return "identity", (x,), {}
    if isinstance(module, nn.GELU):
        return "gelu", (x,), {"approximate": module.approximate}
    if isinstance(module, nn.Softmax):
        return "softmax", (x, module.dim), {}
    if isinstance(module, nn.Flatten):
        return "flatten", (x, module.start_dim, module.end_dim), {}
    for cls, op in _ACTIVATIONS.items():
        if isinstance(module, cls):
            return op, (x,), {}
    # Unknown leaf module: keep its call, and make its parameters visible as graph inputs.
    tensors = {name: param(t) for name, t in list(module.named_parameters(recurse=True))
               + list(module.named_buffers(recurse=True))}
    return _snake(type(module).__name__), tuple(args), {**kwargs, **tensors}
