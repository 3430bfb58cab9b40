"""Reading weights completely and faithfully: every tensor present, none extra, dtypes kept.

A checkpoint that misses a tensor would otherwise be filled with fresh random weights, and
extra tensors dropped, with nothing said; both are errors here, naming the tensors.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

import torch

from ..errors import UsageError


def _listed(names: Iterable[str], limit: int = 5) -> str:
    names = sorted(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(f"'{n}'" for n in names[:limit]) + more


def completeness_error(source: str, missing: Iterable[str], unexpected: Iterable[str],
                       what: str = "the model") -> UsageError | None:
    """The error for a checkpoint that lacks tensors or has extra ones (None when it fits).

    >>> print(completeness_error("m/model.safetensors", ["h.0.w"], []))
    m/model.safetensors: does not fit the model: missing tensor(s) 'h.0.w'; the checkpoint was truncated, edited or written for another configuration
    >>> completeness_error("m", [], []) is None
    True
    """
    missing, unexpected = list(missing), list(unexpected)
    if not missing and not unexpected:
        return None
    parts = ([f"missing tensor(s) {_listed(missing)}"] if missing else []) + \
            ([f"unexpected tensor(s) {_listed(unexpected)}"] if unexpected else [])
    return UsageError(f"{source}: does not fit {what}: {'; '.join(parts)}; the checkpoint was truncated, edited or "
                      "written for another configuration")


def read_state(file: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file, or of a ``torch.save`` file read with ``weights_only=True``.

    >>> read_state("missing.safetensors")
    Traceback (most recent call last):
    ...
    symdsl.errors.UsageError: checkpoint 'missing.safetensors' does not exist
    """
    file = str(file)
    if not Path(file).is_file():
        raise UsageError(f"checkpoint '{file}' does not exist")
    if file.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(file)
        except (SafetensorError, OSError) as exc:
            raise UsageError(f"{file}: not a readable safetensors file ({exc}); it may be truncated or corrupt") from None
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:   # pickle refusals come as UnpicklingError, RuntimeError, EOFError ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{file}: cannot read as weights only ({first[:200]}); symdsl never unpickles code: "
                         "convert it to .safetensors with the code that wrote it") from None
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"{file}: expected a mapping of tensor names to tensors (a state dict)")
    return dict(state)


def load_complete(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str,
                  what: str = "the model") -> torch.nn.Module:
    """Load ``state`` into ``model`` strictly, in the checkpoint's floating dtype; errors name the tensors.

    >>> net = torch.nn.Linear(2, 2)
    >>> load_complete(net, {"weight": torch.zeros(2, 2, dtype=torch.float16), "bias": torch.zeros(2,
    ...               dtype=torch.float16)}, "x").weight.dtype
    torch.float16
    >>> load_complete(net, {"weight": torch.zeros(2, 2)}, "x")
    Traceback (most recent call last):
    ...
    symdsl.errors.UsageError: x: does not fit the model: missing tensor(s) 'bias'; the checkpoint was truncated, edited or written for another configuration
    """
    expected = model.state_dict()
    error = completeness_error(source, expected.keys() - state.keys(), state.keys() - expected.keys(), what)
    if error is not None:
        raise error
    wrong = [k for k in expected if tuple(state[k].shape) != tuple(expected[k].shape)]
    if wrong:
        k = wrong[0]
        raise UsageError(f"{source}: does not fit {what}: tensor '{k}' has shape {tuple(state[k].shape)}, it needs "
                         f"{tuple(expected[k].shape)}" + (f" ({len(wrong) - 1} more differ)" if len(wrong) > 1 else ""))
    dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
    if len(dtypes) == 1:        # keep a float16/bfloat16 checkpoint in its dtype
        model.to(next(iter(dtypes)))
    model.load_state_dict(state)
    return model
