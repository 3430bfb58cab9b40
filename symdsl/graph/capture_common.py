"""Helpers every capture backend shares: tensor aliases, source locations, shapes, inputs."""
from __future__ import annotations

import contextlib
import linecache
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import torch

from .capture_types import Shape

_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_OWN_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep  # capture's own frames are never the source
_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in [^\n]*(?:\n(?P<code>[ \t]+\S[^\n]*))?')


@dataclass
class TensorAliases:
    """Every name of every parameter and buffer, grouped by tensor identity (tied weights).

    >>> lin = torch.nn.Linear(2, 2)
    >>> TensorAliases.of(lin).names("weight")
    ['weight']
    """

    groups: list[list[str]] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)  # "param" or "buffer", per group
    _group_of_id: dict[int, int] = field(default_factory=dict)
    _group_of_name: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, model: torch.nn.Module) -> "TensorAliases":
        table = cls()
        named = [(n, t, "param") for n, t in model.named_parameters(remove_duplicate=False)]
        named += [(n, t, "buffer") for n, t in model.named_buffers(remove_duplicate=False)]
        for name, tensor, kind in named:
            if tensor is None:
                continue
            index = table._group_of_id.get(id(tensor))
            if index is None:
                index = table._group_of_id[id(tensor)] = len(table.groups)
                table.groups.append([])
                table.kinds.append(kind)
            table.groups[index].append(name)
            table._group_of_name[name] = index
        return table

    def group(self, name: str) -> int | None:
        """The group index of a state-dict name, None if the model has no such tensor."""
        return self._group_of_name.get(name)

    def group_of(self, tensor: torch.Tensor) -> int | None:
        """The group index of a tensor object, None if it is not a parameter or buffer."""
        return self._group_of_id.get(id(tensor))

    def names(self, name: str) -> list[str]:
        """All names of the tensor called ``name`` (just ``[name]`` if it is unknown)."""
        index = self.group(name)
        return list(self.groups[index]) if index is not None else [name]


def param_node_name(fqn: str, kind: str) -> str:
    """The node name torch.export gives a lifted tensor: ``p_`` / ``b_`` + the path in snake case.

    >>> param_node_name("blocks.0.norm1.weight", "param")
    'p_blocks_0_norm1_weight'
    """
    prefix = {"param": "p_", "buffer": "b_"}.get(kind, "c_")
    return prefix + re.sub(r"\W", "_", fqn).lower()


def owner_module(fqn: str) -> str:
    """The module path that owns a tensor: ``"blocks.0.mlp.fc1.weight"`` -> ``"blocks.0.mlp.fc1"``."""
    return fqn.rpartition(".")[0]


def source_location(stack_trace: str | None) -> tuple[str | None, str | None]:
    """``("file.py:LINE", code)`` for the innermost frame of a node's stack trace that is not
    torch's own code (nn.Linear.forward, fx's tracer...): that frame is the model line that
    made the op. Falls back to the innermost frame when every frame is torch's.

    >>> source_location('File "/m/model.py", line 3, in forward\\n    return self.fc(x)\\n'
    ...                 '  File "' + _TORCH_DIR + 'nn/modules/linear.py", line 134, in forward\\n'
    ...                 '    return F.linear(input, self.weight, self.bias)')
    ('/m/model.py:3', 'return self.fc(x)')
    >>> source_location('File "/m/model.py", line 9, in forward\\n    q = rope(q, cos, sin)\\n'
    ...                 '  File "/lib/hub.py", line 5, in wrapper\\n    return func(*args, **kwargs)')
    ('/m/model.py:9', 'q = rope(q, cos, sin)')
    """
    if not stack_trace:
        return None, None
    frames = list(_FRAME.finditer(stack_trace))
    if not frames:
        return None, None
    mine = [f for f in frames if not f["file"].startswith((_TORCH_DIR, _OWN_DIR, "<"))]
    # a decorator that only forwards the call (``return func(*args, **kwargs)``) is not the model's line
    mine = [f for f in mine if not _FORWARDER.fullmatch(_code(f))] or mine
    frame = (mine or frames)[-1]
    return f"{frame['file']}:{frame['line']}", _code(frame) or None


_FORWARDER = re.compile(r"return \w+\(\*args, \*\*kwargs\)")


def _code(frame) -> str:
    return frame["code"].strip() if frame["code"] else linecache.getline(frame["file"], int(frame["line"])).strip()


def module_path(meta: Mapping[str, Any]) -> str | None:
    """The module that created a node: the last entry of ``meta["nn_module_stack"]``.

    Entries are ``key -> (path, class)`` in both fx and export; ``""`` is the root module.
    """
    stack = meta.get("nn_module_stack")
    if not stack:
        return None
    path = list(stack.values())[-1][0]
    return path if isinstance(path, str) else str(path)


def shape_and_dtype(value: Any) -> tuple[Shape | tuple[Shape, ...] | None, torch.dtype | None]:
    """Static shape and dtype of a (fake) tensor, or of a list/tuple of them (multi-output ops).

    >>> shape_and_dtype([torch.zeros(2, 3), torch.zeros(2, 3)])
    (((2, 3), (2, 3)), torch.float32)
    """
    if isinstance(value, torch.Tensor):
        return tuple(int(d) for d in value.shape), value.dtype
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, torch.Tensor) for v in value):
        return tuple(tuple(int(d) for d in v.shape) for v in value), value[0].dtype
    return None, None


class UniqueNames:
    """Hands out node names, suffixing ``_1``, ``_2``... when one is taken."""

    def __init__(self) -> None:
        self.taken: set[str] = set()

    def claim(self, wanted: str) -> str:
        name, n = wanted, 0
        while name in self.taken:
            n += 1
            name = f"{wanted}_{n}"
        self.taken.add(name)
        return name


def split_inputs(inputs: Any) -> tuple[tuple, dict]:
    """Example inputs as ``(args, kwargs)``: a mapping is keyword inputs, a tuple/list
    positional ones, anything else (one tensor) the single positional input.

    >>> split_inputs({"x": 1})
    ((), {'x': 1})
    """
    if inputs is None:
        return (), {}
    if isinstance(inputs, Mapping):
        return (), dict(inputs)
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs), {}
    return (inputs,), {}


@contextlib.contextmanager
def without_kv_cache(model: torch.nn.Module) -> Iterator[None]:
    """Set ``use_cache = False`` on the model's config, and on every submodule's own config (T5's
    decoder stack keeps a copy), while capturing (a KV cache is an extra output that tracing
    cannot follow), and restore them afterwards."""
    configs = {id(c): c for c in (getattr(m, "config", None) for m in model.modules())
               if c is not None and hasattr(c, "use_cache")}
    saved = {key: config.use_cache for key, config in configs.items()}
    for config in configs.values():
        config.use_cache = False
    try:
        yield
    finally:
        for key, config in configs.items():
            config.use_cache = saved[key]
