"""Data parallelism through ``torch.distributed``: one process per rank, as ``torchrun`` starts them.

The same command runs on one process (nothing here does anything: world size 1), on several
CPU processes (gloo) and on several GPUs or machines (NCCL). ``torchrun`` describes the job in
the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``);
:func:`init_from_env` starts the process group from it once. Then:

- every rank draws the same random numbers (lambda samples, batch order) and keeps its own
  contiguous shard of each batch (:func:`shard`);
- a shard's mean loss is weighted by its share of the batch (:func:`share`), so the sum of the
  ranks' gradients (:func:`all_reduce_gradients`) is the one-process gradient of the whole
  batch, up to the order of float additions;
- evaluation reduces ``(loss_sum, count, ...)`` over ranks (:func:`reduce_sums`) and divides once;
- what is chosen at the end is broadcast from rank 0 (:func:`broadcast_tensors`), and only rank
  0 prints and writes (:func:`is_main`).

>>> rank(), world_size(), is_main()          # no process group: one process
(0, 1, True)
>>> x = torch.arange(10)
>>> shard(x, rank=1, world=3).tolist(), share(x, x[3:6])
([3, 4, 5], 0.3)
>>> reduce_sums([2.5, 4])
[2.5, 4.0]
"""
from __future__ import annotations

import atexit
import os
from typing import Iterable, Mapping, Sequence

import torch

from .errors import UsageError

ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def requested() -> bool:
    """Does the environment describe a job of several processes (``WORLD_SIZE`` > 1, as torchrun sets it)?"""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        raise UsageError(f"WORLD_SIZE='{os.environ['WORLD_SIZE']}' is not a number; start several processes "
                         "with torchrun --nproc-per-node N, which sets it") from None


def active() -> bool:
    """Is a process group of more than one process running?"""
    return torch.distributed.is_available() and torch.distributed.is_initialized() and \
        torch.distributed.get_world_size() > 1


def init_from_env(device: torch.device | str | None = None) -> bool:
    """Start the process group described by torchrun's environment, once; True if one runs.

    Backend: NCCL when ``device`` is a CUDA device, else gloo. Nothing happens (False) on a
    single process. A half-described job (``WORLD_SIZE`` without ``MASTER_ADDR``...) is refused
    naming the missing variables.
    """
    if active():
        return True
    if not requested():
        return False
    missing = [name for name in ENV if name not in os.environ]
    if missing:
        raise UsageError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} not set; start the "
                         "processes with torchrun (it sets them all) or unset WORLD_SIZE")
    if not torch.distributed.is_available():
        raise UsageError("this torch build has no torch.distributed; run one process (unset WORLD_SIZE)")
    cuda = torch.device(device).type == "cuda" if device is not None else False
    if cuda:
        # one GPU per process on each machine: the rank's local index picks it
        local, count = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
        if local >= count:
            raise UsageError(f"process LOCAL_RANK={local} has no GPU of its own: this machine has {count}; "
                             f"start at most {count} processes per machine (torchrun --nproc-per-node {count})")
        torch.cuda.set_device(local)
    torch.distributed.init_process_group(backend="nccl" if cuda else "gloo")
    # leave the group at exit: NCCL warns (and may hang) when a process ends inside one
    atexit.register(_leave)
    return True


def _leave() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def local_device(device: torch.device | str | None) -> torch.device | str | None:
    """``device`` with a bare ``cuda`` made this rank's own GPU (``cuda:LOCAL_RANK``) in a job of
    several processes; any other device as given.

    >>> local_device("cpu"), local_device(None)
    ('cpu', None)
    """
    if device is None or not requested() or str(device) != "cuda":
        return device
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def rank() -> int:
    """This process's rank (0 on a single process)."""
    return torch.distributed.get_rank() if active() else 0


def world_size() -> int:
    """The number of processes (1 on a single process)."""
    return torch.distributed.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0: the one process that prints, reports progress and writes outputs."""
    return rank() == 0


def bounds(n: int, *, rank: int | None = None, world: int | None = None) -> tuple[int, int]:
    """``[start, stop)`` of a rank's contiguous share of ``n`` items; shares differ by at most one.

    >>> [bounds(5, rank=r, world=2) for r in (0, 1)]
    [(0, 2), (2, 5)]
    """
    r = globals()["rank"]() if rank is None else rank
    w = world_size() if world is None else world
    return n * r // w, n * (r + 1) // w


def shard(batch: torch.Tensor, *, rank: int | None = None, world: int | None = None) -> torch.Tensor:
    """This rank's rows of ``batch`` (first dimension): the whole batch on one process."""
    start, stop = bounds(int(batch.shape[0]), rank=rank, world=world)
    return batch[start:stop]


def share(whole_targets: torch.Tensor, shard_targets: torch.Tensor) -> float:
    """The shard's fraction of the batch's loss terms (examples, or tokens for language models):
    the weight of the shard's mean loss so that the ranks' weighted losses sum to the batch mean."""
    return shard_targets.numel() / max(whole_targets.numel(), 1)


def _comm_device() -> torch.device:
    # NCCL moves only CUDA tensors; gloo only CPU ones
    if active() and torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_gradients(parameters: Iterable[torch.Tensor]) -> None:
    """Sum every parameter's gradient over the ranks, in place (a missing gradient counts as 0).

    One flat float64 buffer per call, so that the sum does not lose digits and takes one message.
    """
    if not active():
        return
    params = list(parameters)
    if not params:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1).to(torch.float64) for p in params]).to(_comm_device())
    torch.distributed.all_reduce(flat)
    offset = 0
    for p in params:
        n = p.grad.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad).to(p.grad))
        offset += n


def reduce_sums(values: Sequence[float]) -> list[float]:
    """The sums over ranks of ``values`` (``[loss_sum, count, ...]``), in float64, the same on every rank."""
    if not active():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_comm_device())
    torch.distributed.all_reduce(t)
    return [float(v) for v in t.cpu()]


def broadcast_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rank 0's ``tensors`` on every rank (same names, shapes and dtypes everywhere; each keeps its device)."""
    if not active():
        return dict(tensors)
    out = {}
    for name in sorted(tensors):   # the same order on every rank
        value = tensors[name]
        buffer = value.detach().clone().contiguous().to(_comm_device())
        torch.distributed.broadcast(buffer, src=0)
        out[name] = buffer.to(value.device)
    return {name: out[name] for name in tensors}
