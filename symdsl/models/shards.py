"""Sharded safetensors checkpoints: read an input's shard layout, write an output in that layout.

A large checkpoint is several ``model-0000N-of-0000M.safetensors`` files and
``model.safetensors.index.json`` (``weight_map``: tensor name -> file). An output that keeps
an input's layout (B for an alignment, the first model for a merge) is written with the same
file names, the same tensor -> file map and, with ``dtype="auto"``, each tensor in the dtype
the input stored it in; one shard is cast and written at a time, so writing needs the memory
of one shard on top of the model.

What cannot keep the layout, and what happens instead (each case gives a note):

- a tensor the input's index does not name (an embedding that symdsl untied, so the output
  has ``lm_head.weight`` where B stored one tied tensor) goes into the last shard;
- a tensor the index names that the model does not have (a renamed tensor, a checkpoint
  format that transformers converts on load): the whole output is written by
  ``save_pretrained`` in its own layout instead.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch

from ..errors import UsageError

INDEX = "model.safetensors.index.json"
# safetensors header dtype names -> torch dtypes (the floating ones an output may be written in)
SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
_MAX_HEADER = 100 << 20     # safetensors' own limit on a header's size


@dataclass(frozen=True)
class ShardLayout:
    """An input's shard layout: ``files`` sorted by name, ``weight_map`` (tensor -> file), each
    tensor's stored dtype (``dtypes``: floating tensors only), the index's own ``metadata``."""

    folder: str
    files: tuple[str, ...]
    weight_map: dict[str, str]
    dtypes: dict[str, torch.dtype] = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)

    @property
    def dtype(self) -> torch.dtype | None:
        """The dtype most of the floating tensors are stored in (what ``config.json`` says)."""
        counts: dict[torch.dtype, int] = {}
        for dtype in self.dtypes.values():
            counts[dtype] = counts.get(dtype, 0) + 1
        return max(counts, key=lambda d: counts[d]) if counts else None


def _header(file: Path) -> dict:
    """A safetensors file's JSON header (names, dtypes, shapes, offsets) without reading its data."""
    try:
        with open(file, "rb") as handle:
            size = struct.unpack("<Q", handle.read(8))[0]
            if size > _MAX_HEADER:
                raise ValueError(f"header of {size} bytes")
            header = json.loads(handle.read(size))
    except (OSError, ValueError, struct.error) as exc:
        raise UsageError(f"{file}: not a readable safetensors file ({exc}); it may be truncated or corrupt") from None
    if not isinstance(header, dict):
        raise UsageError(f"{file}: not a readable safetensors file (its header is not a JSON object)")
    return header


def read_layout(folder: str | Path | None) -> ShardLayout | None:
    """The shard layout of a folder with ``model.safetensors.index.json`` (None: no index, one file).

    The index must name only plain file names inside the folder that exist, or a
    :class:`~symdsl.errors.UsageError` names the index, the tensor and the file.

    >>> import tempfile
    >>> read_layout(tempfile.mkdtemp()) is None
    True
    """
    if folder is None:
        return None
    index = Path(folder) / INDEX
    if not index.is_file():
        return None
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{index}: not valid JSON ({exc})") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise UsageError(f"{index}: no 'weight_map' (tensor name -> shard file); the index was edited or truncated")
    files: list[str] = []
    for name, file in weight_map.items():
        if not isinstance(file, str) or Path(file).name != file or file in ("", ".", ".."):
            raise UsageError(f"{index}: weight_map: '{name}' -> {file!r} is not a file name in this folder")
        if file not in files:
            if not (Path(folder) / file).is_file():
                raise UsageError(f"{index}: weight_map: '{name}' is in shard '{file}', which does not exist; "
                                 "the checkpoint is incomplete")
            files.append(file)
    dtypes = {}
    for file in files:
        for name, entry in _header(Path(folder) / file).items():
            if isinstance(entry, dict) and entry.get("dtype") in SAFETENSORS_DTYPES:
                dtypes[name] = SAFETENSORS_DTYPES[entry["dtype"]]
    metadata = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
    return ShardLayout(str(folder), tuple(sorted(files)), dict(weight_map), dtypes, dict(metadata))


def plan_shards(state: Mapping[str, torch.Tensor], layout: ShardLayout) -> tuple[dict[str, list[str]] | None, list[str]]:
    """Which tensors of ``state`` go into which of ``layout``'s files, and the notes about it.

    Tensors sharing storage (tied) are written once, under the names the layout has (as
    ``save_pretrained`` drops the tied copy); names the layout lacks go into the last file.
    Returns ``(None, [note])`` when the layout names a tensor ``state`` lacks (see the module docstring).

    >>> w = torch.zeros(2)
    >>> layout = ShardLayout("b", ("s1", "s2"), {"a": "s1", "b": "s2"})
    >>> plan_shards({"a": w, "b": torch.ones(2), "tied": w}, layout)
    ({'s1': ['a'], 's2': ['b']}, [])
    >>> plan_shards({"a": w, "b": torch.ones(2), "c": torch.ones(1)}, layout)[1]
    ["shards: 'c' is not in the layout input's index (untied or new): written to shard 's2'"]
    """
    missing = [name for name in layout.weight_map if name not in state]
    if missing:
        shown = ", ".join(f"'{n}'" for n in missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        return None, [f"shards: the layout input's index names {shown}, which the model does not have (renamed or "
                      "converted on load): written by save_pretrained in its own layout, not the input's shards"]
    by_storage: dict[tuple[int, int], list[str]] = {}
    for name, tensor in state.items():     # tied tensors share one storage (and offset)
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset()) if tensor.numel() else (id(tensor), 0)
        by_storage.setdefault(key, []).append(name)
    plan: dict[str, list[str]] = {file: [] for file in layout.files}
    notes = []
    last = layout.files[-1]
    for names in by_storage.values():
        mapped = [n for n in names if n in layout.weight_map]
        for name in mapped or names[:1]:
            file = layout.weight_map.get(name)
            if file is None:
                file = last
                notes.append(f"shards: '{name}' is not in the layout input's index (untied or new): written to shard '{last}'")
            plan[file].append(name)
    return plan, notes


def write_shards(state: Mapping[str, torch.Tensor], layout: ShardLayout, plan: Mapping[str, list[str]], folder: Path,
                 dtype: torch.dtype | None = None) -> None:
    """Write ``state`` into ``folder`` as ``plan`` says, with an index like the layout input's.

    ``dtype``: cast every floating tensor; None keeps each tensor's dtype in the layout input
    (a tensor the input lacks keeps its own). One shard is cast and written at a time.
    """
    from safetensors.torch import save_file

    weight_map: dict[str, str] = {}
    total_size = total_parameters = 0
    for file in layout.files:
        shard, seen = {}, set()
        for name in plan.get(file, []):
            tensor = state[name].detach()
            if tensor.is_floating_point():
                tensor = tensor.to(dtype or layout.dtypes.get(name, tensor.dtype))
            tensor = tensor.cpu().contiguous()
            if tensor.numel() and tensor.untyped_storage().data_ptr() in seen:
                tensor = tensor.clone()        # tied names the layout keeps apart: safetensors refuses shared storage
            seen.add(tensor.untyped_storage().data_ptr())
            shard[name] = tensor
            weight_map[name] = file
            total_size += shard[name].numel() * shard[name].element_size()
            total_parameters += shard[name].numel()
        save_file(shard, str(folder / file), metadata={"format": "pt"})
        del shard
    order = [n for n in layout.weight_map if n in weight_map] + [n for n in weight_map if n not in layout.weight_map]
    metadata = {**layout.metadata, "total_size": total_size}
    if "total_parameters" in layout.metadata:
        metadata["total_parameters"] = total_parameters
    index = {"metadata": metadata, "weight_map": {name: weight_map[name] for name in order}}
    (folder / INDEX).write_text(json.dumps(index, indent=2) + "\n")
