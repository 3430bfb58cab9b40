"""How many intra-op threads torch may use for a piece of work, and a block that runs with them.

Why this exists: torch starts with one intra-op thread per core. On a CPU shared with other
jobs, a parallel op waits for its slowest worker, and a worker without a free core waits for
the scheduler; a tiny GPT-2 align took 21 s with torch's default threads and another job
running, against 0.8 s with one thread. Small matrices gain nothing from more threads even
on an idle machine. So the count is chosen, in this order:

1. an explicit count (a matcher's ``threads`` option);
2. a count set for the whole command (``symdsl align/merge/barrier --threads N``:
   :func:`set_command_threads`);
3. ``OMP_NUM_THREADS`` from the environment (the user's own choice for this machine);
4. otherwise by size: one thread below :data:`SMALL_WORK` elements; above it, the cores this
   process may run on that are not busy now (CPU time of the whole machine over
   :data:`SAMPLE_SECONDS`, from ``/proc/stat``), at least one. The 1-minute load average, used
   where ``/proc/stat`` is missing, lags: a job that ended a minute ago still counts, and a 1B
   alignment started after it ran on one of two idle cores for its whole run.
"""
from __future__ import annotations

import contextlib
import os
import time

import torch

from .errors import UsageError

# Elements (of the tensors a matcher works on) below which one thread is used. Chosen, not
# tuned: GPT-2 up to 4 layers x 256 (16M parameters, mostly the 50257 x 256 embedding) matches
# in a few seconds on one thread, where a second thread can only lose on a shared CPU; GPT-2
# small (124M) spends most of its time in large BLAS calls that two idle cores speed up.
SMALL_WORK = 32_000_000

_command_threads: int | None = None


def set_command_threads(count: int | None) -> None:
    """Set (or with None clear) the thread count of the running command, e.g. from ``--threads``.

    >>> set_command_threads(1); choose_threads(None, work=10**9)
    1
    >>> set_command_threads(None)
    """
    global _command_threads
    if count is not None:
        _check_count(count, "--threads")
    _command_threads = count


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports one).

    >>> usable_cores() >= 1
    True
    """
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


SAMPLE_SECONDS = 0.1     # how long busy_cores watches the machine (once per large matching)


def cpu_times(text: str) -> tuple[int, int]:
    """``(busy, total)`` clock ticks of all CPUs from ``/proc/stat``'s text (its first ``cpu`` line);
    idle and iowait count as not busy.

    >>> cpu_times("cpu  100 0 50 800 50 0 0 0 0 0\\ncpu0 ...")
    (150, 1000)
    """
    fields = [int(x) for x in text.splitlines()[0].split()[1:]]
    total = sum(fields[:8])                  # user nice system idle iowait irq softirq steal
    return total - fields[3] - fields[4], total


def busy_cores() -> float:
    """How many cores the machine keeps busy now: CPU time over :data:`SAMPLE_SECONDS` (``/proc/stat``),
    or the 1-minute load average where that cannot be read. The caller sleeps meanwhile, so its
    own work does not count.

    >>> 0.0 <= busy_cores() <= (os.cpu_count() or 1) + 0.5
    True
    """
    try:
        with open("/proc/stat") as stat:
            busy0, total0 = cpu_times(stat.read())
        time.sleep(SAMPLE_SECONDS)
        with open("/proc/stat") as stat:
            busy1, total1 = cpu_times(stat.read())
    except (OSError, ValueError, IndexError):
        try:
            return os.getloadavg()[0]
        except OSError:      # no load average on this platform: assume idle
            return 0.0
    if total1 <= total0:
        return 0.0
    return (busy1 - busy0) / (total1 - total0) * (os.cpu_count() or 1)


def idle_cores() -> int:
    """Usable cores minus the busy ones (:func:`busy_cores`, rounded), at least 1.

    >>> 1 <= idle_cores() <= usable_cores()
    True
    """
    cores = usable_cores()
    return max(1, min(cores, int(cores - busy_cores() + 0.5)))


def environment_threads() -> int | None:
    """``OMP_NUM_THREADS`` as a positive count, None when unset; a bad value is a clear error.

    >>> os.environ.get("OMP_NUM_THREADS") is None or environment_threads() >= 1
    True
    """
    text = os.environ.get("OMP_NUM_THREADS", "").strip()
    if not text:
        return None
    try:
        count = int(text.split(",")[0])     # OpenMP allows a per-level list "4,2": the outer level counts
    except ValueError:
        raise UsageError(f"OMP_NUM_THREADS={text!r} is not a thread count; set it to a positive integer "
                         f"(e.g. OMP_NUM_THREADS=1) or unset it") from None
    _check_count(count, "OMP_NUM_THREADS")
    return count


def choose_threads(requested: int | None, *, work: int) -> int:
    """The intra-op thread count for ``work`` elements (see the module docstring for the order).

    >>> choose_threads(3, work=10)
    3
    >>> "OMP_NUM_THREADS" in os.environ or choose_threads(None, work=1000) == 1
    True
    """
    if requested is not None:
        _check_count(requested, "threads")
        return requested
    if _command_threads is not None:
        return _command_threads
    from_environment = environment_threads()
    if from_environment is not None:
        return from_environment
    if work < SMALL_WORK:
        return 1
    return idle_cores()


@contextlib.contextmanager
def torch_threads(count: int | None):
    """Run the block with ``count`` intra-op threads (None: leave torch's setting), restored after.

    >>> with torch_threads(1):
    ...     torch.get_num_threads()
    1
    """
    if count is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _check_count(count, where: str) -> None:
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise UsageError(f"{where}: {count!r} is not a thread count; give a positive integer (1 is best for "
                         f"small models and shared machines)")
