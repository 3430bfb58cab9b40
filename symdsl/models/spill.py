"""Move the tensors canonicalization wrote out of memory, into files mapped back in.

``symdsl align`` canonicalizes both checkpoints in place: folding a norm gain into its readers
writes them, and a written page of a memory-mapped checkpoint is a private copy the kernel can
only keep in memory. For a Llama-3-8B-shaped pair that is about 10 GB per model that stays
resident through matching, though matching reads each tensor a few times only. Spilling writes
each such tensor to a file and maps the file back privately: the values are the same bits, but
their pages are now file pages, which :func:`symdsl.models.pages.release_pages` hands back once
read (as it does for the checkpoint's own pages), and which the kernel may drop under pressure.

The files are removed as soon as they are mapped (the mapping keeps the data reachable until the
tensor goes), so nothing is left behind, even if the process is killed. The folder must not be a
memory file system (a ``tmpfs`` /tmp would keep the bytes in memory): ``symdsl align`` uses the
output's parent folder.

Linux only (it reads ``/proc/self/pagemap`` to find written tensors); elsewhere nothing is spilled.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import MutableMapping

import torch

from . import pages

log = logging.getLogger(__name__)

# Tensors smaller than this stay where they are (few pages; a file each would cost more).
MIN_SPILL_BYTES = 1 << 20


def _written(tensor: torch.Tensor) -> bool:
    """Does ``tensor`` hold resident pages that no file backs (heap memory, or copy-on-write copies)?"""
    return pages.anonymous_bytes(tensor) > 0


def _mapped_copy(tensor: torch.Tensor, folder: Path) -> torch.Tensor:
    """The same values in a private mapping of a new file in ``folder`` (removed at once)."""
    nbytes = tensor.numel() * tensor.element_size()
    handle, name = tempfile.mkstemp(prefix="symdsl-spill-", suffix=".bin", dir=folder)
    try:
        with os.fdopen(handle, "wb") as file:
            # (numel,) bytes viewed as uint8: numpy has no bfloat16, and bytes are all that is kept
            tensor.detach().reshape(-1).view(torch.uint8).numpy().tofile(file)
        storage = torch.UntypedStorage.from_file(name, shared=False, nbytes=nbytes)
    finally:
        os.unlink(name)          # the mapping holds the data from here on
    return torch.empty(0, dtype=tensor.dtype).set_(storage, 0, tensor.shape, tensor.stride())


def spill_written(model: torch.nn.Module, state: MutableMapping[str, torch.Tensor], folder: str | Path) -> int:
    """Move each tensor of ``state`` (``model``'s own tensors, detached) that holds written pages into
    a file in ``folder`` mapped back privately; rebinds ``model``'s parameters and buffers and
    ``state``'s entries to it (names sharing a tensor keep sharing it). Returns the bytes spilled.

    Only contiguous CPU tensors of at least ``MIN_SPILL_BYTES`` are spilled. The pages they held in
    a checkpoint's mapping are dropped (:func:`symdsl.models.pages.discard_pages`): a tensor taken
    from ``model`` before the call and kept elsewhere reads the checkpoint's bytes there afterwards.
    When ``folder`` has not room for them, nothing is spilled (a warning says so) and memory stays
    as it was.

    >>> import tempfile
    >>> net = torch.nn.Linear(1024, 512)
    >>> state = {k: v.detach() for k, v in net.state_dict().items()}
    >>> spill_written(net, state, tempfile.gettempdir()) == 1024 * 512 * 4
    True
    >>> net.weight.data_ptr() == state["weight"].data_ptr()
    True
    """
    if not pages.can_inspect():
        return 0
    # one entry per tensor, however many names it has (a tie); a checkpoint's tensors are views of one
    # storage per shard, so a tensor is known by its own address and shape, not its storage's
    by_tensor: dict[tuple, list[str]] = {}
    for name, tensor in state.items():
        if (tensor.device.type == "cpu" and tensor.is_contiguous()
                and tensor.numel() * tensor.element_size() >= MIN_SPILL_BYTES and _written(tensor)):
            by_tensor.setdefault(_key(tensor), []).append(name)
    needed = sum(state[names[0]].numel() * state[names[0]].element_size() for names in by_tensor.values())
    if not needed:
        return 0
    folder = Path(folder)
    free = shutil.disk_usage(folder).free
    if free < needed + (1 << 30):
        log.warning("not spilling %.2f GB of canonical tensors to %s: %.2f GB free there (keeping them in memory)",
                    needed / 1e9, folder, free / 1e9)
        return 0
    owners = _owners(model)
    with torch.no_grad():
        for names in by_tensor.values():
            old = state[names[0]]
            new = _mapped_copy(old, folder)
            for tensor in owners.get(_key(old), ()):
                tensor.data = new                    # the module's parameter or buffer, same object
            for name in names:
                state[name] = new
            # a checkpoint's tensors are views of one mapping per shard, which stays while its other
            # tensors are used: the kernel's copies of the written pages go only when dropped
            pages.discard_pages([old])
    return needed


def _key(tensor: torch.Tensor) -> tuple:
    """What identifies a tensor's values in memory: first element's address, shape, dtype."""
    return tensor.data_ptr(), tuple(tensor.shape), tensor.dtype


def _owners(model: torch.nn.Module) -> dict[tuple, list[torch.Tensor]]:
    """:func:`_key` -> the module's parameters and buffers holding those values (a tied pair: both)."""
    found: dict[tuple, list[torch.Tensor]] = {}
    named = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    for _, tensor in named:
        if tensor.numel():
            found.setdefault(_key(tensor), []).append(tensor)
    return found
