"""The saved transform of an alignment: ``transform.safetensors`` with its metadata.

One tensor per site (its group element: a permutation as int64 indices, a matrix in float64,
batched over ``per`` sites), and safetensors string metadata that says what it fits:

- ``format``: ``symdsl-transform``, ``version``: ``1``;
- ``spec``: the spec's name; ``sites``: JSON ``{site: {"kind": kind name, "shape": [...]}}``;
- ``a_sha256``, ``b_sha256``: digests of A's and B's canonical state dicts (names, shapes,
  dtypes and bytes, in name order), so that a later ``symdsl apply`` can say whether the model
  it is given is the B the transform was found for.

Files written before the metadata existed load too (spec from the folder's ``symdsl.json``).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from ..errors import UsageError

TRANSFORM_FILE = "transform.safetensors"
FORMAT = "symdsl-transform"


def state_digest(state: Mapping[str, torch.Tensor], after: Callable[[torch.Tensor], Any] | None = None) -> str:
    """SHA-256 over a state dict's names, shapes, dtypes and bytes, in name order; ``after`` is called
    with each tensor once it is hashed (e.g. to release a checkpoint's mapped pages).

    >>> a = {"w": torch.ones(2), "b": torch.zeros(1)}
    >>> state_digest(a) == state_digest(dict(reversed(list(a.items())))), len(state_digest(a))
    (True, 64)
    """
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().data if tensor.numel() else b"")   # the bytes, not a copy
        if after is not None:
            after(state[name])
    return digest.hexdigest()


def transform_metadata(spec: str, elements: Mapping[str, torch.Tensor], kinds: Mapping[str, str],
                       a_digest: str | None, b_digest: str | None) -> dict[str, str]:
    """The metadata written beside the elements (safetensors metadata holds strings only)."""
    sites = {name: {"kind": kinds.get(name, "?"), "shape": list(element.shape)} for name, element in elements.items()}
    meta = {"format": FORMAT, "version": "1", "spec": spec, "sites": json.dumps(sites, sort_keys=True)}
    meta.update({k: v for k, v in (("a_sha256", a_digest), ("b_sha256", b_digest)) if v})
    return meta


@dataclass
class SavedTransform:
    """A transform read back: ``elements`` (site -> element), ``spec`` (name, None if unknown),
    ``b_sha256`` (B's canonical digest, None in older files), ``file`` it came from."""

    elements: dict[str, torch.Tensor]
    spec: str | None
    file: Path
    b_sha256: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


def read_elements_file(path: str | Path, file_name: str, what: str,
                       hint: str) -> tuple[Path, dict[str, str], dict[str, torch.Tensor]]:
    """Read a safetensors file of group elements written by symdsl: ``(file, metadata, tensors)``.

    ``path`` is the file or a folder holding ``file_name``; a missing file is a UsageError
    ``no {what} at {file}: {hint}``, an unreadable one a UsageError naming the file (never
    safetensors' own traceback).

    >>> import tempfile
    >>> from safetensors.torch import save_file
    >>> folder = Path(tempfile.mkdtemp())
    >>> save_file({"resid": torch.arange(3)}, str(folder / "t.safetensors"), metadata={"format": "x"})
    >>> file, metadata, tensors = read_elements_file(folder, "t.safetensors", "file", "write one")
    >>> file.name, metadata, tensors["resid"].tolist()
    ('t.safetensors', {'format': 'x'}, [0, 1, 2])
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    file = path / file_name if path.is_dir() else path
    if not file.is_file():
        raise UsageError(f"no {what} at {file}: {hint}")
    try:
        with safe_open(str(file), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise UsageError(f"{file}: not a readable safetensors file ({exc})") from None
    return file, metadata, tensors


def load_transform(path: str | Path) -> SavedTransform:
    """Read ``transform.safetensors`` (or an align output folder holding one).

    A missing file, a file that is not safetensors, or one written by something else gives a
    :class:`~symdsl.errors.UsageError` naming the file.
    """
    file, metadata, elements = read_elements_file(
        path, TRANSFORM_FILE, "transform", f"give an align output folder (it holds {TRANSFORM_FILE}) or the file")
    if metadata.get("format") not in (None, FORMAT):
        raise UsageError(f"{file}: format '{metadata.get('format')}' is not a symdsl transform")
    spec = metadata.get("spec") or _spec_from_record(file.parent / "symdsl.json")
    return SavedTransform(elements, spec, file, metadata.get("b_sha256"), metadata)


def _spec_from_record(record: Path) -> str | None:
    try:
        value = json.loads(record.read_text(encoding="utf-8")).get("spec")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def check_fits(saved: SavedTransform, sites: Mapping) -> None:
    """Every site of the resolved spec has an element of the right shape, and no element is left
    over; otherwise a UsageError naming the site, both shapes and the file."""
    missing = [name for name in sites if name not in saved.elements]
    extra = [name for name in saved.elements if name not in sites]
    if missing or extra:
        raise UsageError(f"{saved.file}: the transform does not fit this model under spec '{saved.spec}': "
                         + "; ".join(part for part in (f"no element for site(s) {missing[:5]}" if missing else "",
                                                       f"element(s) for unknown site(s) {extra[:5]}" if extra else "")
                                     if part)
                         + " (was it computed for another architecture or configuration?)")
    for name, site in sites.items():
        expected = tuple(site.kind.identity(site.size, site.size_in, site.batch, options=site.options).shape)
        if tuple(saved.elements[name].shape) != expected:
            raise UsageError(f"{saved.file}: site '{name}' needs an element of shape {expected} for this model, the "
                             f"transform holds {tuple(saved.elements[name].shape)} (a model of another width?)")


__all__ = ["FORMAT", "SavedTransform", "TRANSFORM_FILE", "check_fits", "load_transform", "read_elements_file",
           "state_digest", "transform_metadata"]
