"""Run a model on a batch the way its task expects, and get logits out of whatever it returns."""
from __future__ import annotations

import contextlib
import inspect

import torch
import torch.nn.functional as F

from ..data.base import TOKEN_TASKS
from ..errors import UsageError


def logits_of(output) -> torch.Tensor:
    """The logits in a model's output: a tensor, a ``ModelOutput``/object with ``.logits``, a dict, a tuple.

    >>> logits_of((torch.ones(2, 3), "aux")).shape
    torch.Size([2, 3])
    """
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, dict):
        logits = output.get("logits")
    if logits is None and isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        logits = output[0]
    if not isinstance(logits, torch.Tensor):
        raise UsageError(f"cannot find logits in a model output of type {type(output).__name__}; "
                         "return a tensor or an object with a .logits tensor")
    return logits


def takes_input_ids(model: torch.nn.Module) -> bool:
    """Does ``model.forward`` take the token ids as the keyword ``input_ids`` (Hugging Face style)?
    A plain module (``forward(self, tokens)``) is called with them positionally instead.

    >>> class TinyLM(torch.nn.Module):
    ...     def forward(self, tokens):
    ...         return tokens
    >>> takes_input_ids(TinyLM())
    False
    """
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError, AttributeError):   # no readable forward signature: Hugging Face style
        return True
    return "input_ids" in parameters


def model_logits(model: torch.nn.Module, task: str, inputs: torch.Tensor) -> torch.Tensor:
    """Logits of ``model`` on a batch: classification ``model(x)`` -> (B, C); language models
    (causal or masked) ``model(input_ids=ids)`` when forward takes ``input_ids`` (Hugging Face),
    else ``model(ids)`` -> (B, T, V).

    >>> model_logits(torch.nn.Flatten(), "classification", torch.ones(2, 1, 3)).shape
    torch.Size([2, 3])
    """
    if task in TOKEN_TASKS and takes_input_ids(model):
        return logits_of(model(input_ids=inputs))
    return logits_of(model(inputs))


def batch_loss(model: torch.nn.Module, task: str, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``model`` on one batch (differentiable): per example, or per token for
    language models, where targets (B, T) are the next tokens of inputs (B, T). Targets equal
    to ``IGNORE_INDEX`` (-100) are left out of the mean: a masked LM's loss is over its masked positions.

    >>> model = torch.nn.Flatten()
    >>> float(batch_loss(model, "classification", torch.zeros(4, 1, 5), torch.zeros(4, dtype=torch.long)))  # log 5
    1.6094379425048828
    """
    logits = model_logits(model, task, inputs)
    # a bfloat16/float16 forward (autocast) still gets its loss in float32 or better
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def autocast(device: torch.device | str | None, dtype: str | None):
    """A ``torch.autocast`` context running the forward pass in ``dtype`` ("bfloat16" or
    "float16") on ``device``'s type; a no-op context for ``None``. The parameters stay in their
    own dtype (the group parameters' gradients too); losses are read in float32.

    >>> with autocast("cpu", "bfloat16"):
    ...     torch.nn.Linear(2, 2)(torch.ones(1, 2)).dtype
    torch.bfloat16
    >>> with autocast("cpu", None):
    ...     torch.nn.Linear(2, 2)(torch.ones(1, 2)).dtype
    torch.float32
    """
    if dtype is None:
        return contextlib.nullcontext()
    if dtype not in AUTOCAST_DTYPES:
        raise UsageError(f"autocast dtype '{dtype}' is not one of {sorted(AUTOCAST_DTYPES)}; "
                         "give bfloat16 (or float16 on CUDA), or leave it out for full precision")
    kind = torch.device(device).type if device is not None else "cpu"
    return torch.autocast(device_type=kind, dtype=AUTOCAST_DTYPES[dtype])
