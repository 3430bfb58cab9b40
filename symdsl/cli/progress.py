"""Progress of long commands on stderr: a tqdm bar per phase on a terminal, periodic log lines elsewhere.

A log or a CI job gets a line through the ``symdsl`` logger (so ``-q`` silences it) at most
every ``min_interval`` seconds while updates come, at least every ``max_interval`` seconds while
a phase runs (a background thread writes it when a step takes long), and one at every phase end,
each with the phase, done/total, elapsed time, rate and the metrics the work reports (loss,
distance ...). On a terminal the bar shows the same and the phase-end line stays behind it.
"""
from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from typing import Callable, Iterator

from tqdm import tqdm

from .logs import get_logger

LINE = "{desc}: {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
POLL = 1.0   # seconds between the background thread's looks at a silent phase


def metrics_text(metrics: dict[str, float]) -> str:
    """``loss 2.31, best validation 0.0712``: metric keywords as words, values to 4 significant digits.

    >>> metrics_text({"loss": 2.3141, "best_validation": 0.07123})
    'loss 2.314, best validation 0.07123'
    """
    return ", ".join(f"{name.replace('_', ' ')} {value:.4g}" for name, value in metrics.items())


class ProgressReporter:
    """A progress callback ``reporter(phase, done, total, **metrics)`` (the matcher interface's, with
    metrics: ``takes_metrics``); ``counter(phase)`` adapts it to a ``(done, total)`` callback.

    ``bars``: draw tqdm bars on stderr; ``lines``: write periodic log lines. ``clock`` is
    injectable so that the timing rules can be tested without waiting.

    >>> reporter = ProgressReporter("align", bars=False, lines=False)
    >>> reporter("weight matching", 3, 10, distance=0.5)
    >>> reporter.state()
    ('weight matching', 3, 10, {'distance': 0.5})
    >>> reporter.close()
    """

    takes_metrics = True

    def __init__(self, label: str, *, bars: bool, lines: bool, min_interval: float = 10.0, max_interval: float = 30.0,
                 clock: Callable[[], float] = time.monotonic, logger: logging.Logger | None = None,
                 heartbeat: bool = True):
        self.label, self.bars, self.lines = label, bars, lines
        self.min_interval, self.max_interval, self.clock = min_interval, max_interval, clock
        self.log = logger or get_logger("progress")
        self.phase: str | None = None
        self.done, self.total, self.metrics = 0, 0, {}
        self.started = self.last_line = 0.0
        self.bar: tqdm | None = None
        self._lock = threading.RLock()     # the heartbeat thread reads what the caller's thread writes
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._heartbeat = heartbeat and lines

    def __call__(self, phase: str, done: int, total: int, **metrics: float) -> None:
        with self._lock:
            if phase != self.phase:
                self._end_phase()
                self.phase, self.started = phase, self.clock()
                self.last_line, self.metrics = self.started, {}
            self.done, self.total = done, total
            self.metrics.update(metrics)
            if self.bars:
                self._draw()
            if self.lines and self.clock() - self.last_line >= self.min_interval:
                self._line()
        if self._heartbeat and self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="symdsl-progress", daemon=True)
            self._thread.start()

    def counter(self, phase: str | None = None) -> Callable[[int, int], None]:
        """A ``(done, total)`` callback reporting as ``phase`` (default: the label)."""
        name = phase or self.label
        return lambda done, total: self(name, done, total)

    def state(self) -> tuple[str | None, int, int, dict[str, float]]:
        """(phase, done, total, metrics) as last reported."""
        with self._lock:
            return self.phase, self.done, self.total, dict(self.metrics)

    def tick(self) -> None:
        """Write a line if the running phase has been silent for ``max_interval`` (the background
        thread calls this every second)."""
        with self._lock:
            if self.lines and self.phase is not None and self.clock() - self.last_line >= self.max_interval - POLL:
                self._line()

    def close(self, *, finished: bool = True) -> None:
        """End the running phase (its line says ``done``, or ``stopped`` when not ``finished``) and
        stop the background thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._lock:
            self._end_phase(" done" if finished else " stopped")
            self.phase = None

    # ------------------------------------------------------------------------------------------

    def _desc(self) -> str:
        return self.label if self.phase in (None, self.label) else f"{self.label} | {self.phase}"

    def _line(self, prefix: str = "") -> None:
        elapsed = self.clock() - self.started
        text = tqdm.format_meter(self.done, self.total or None, elapsed, prefix=self._desc() + prefix,
                                 postfix=metrics_text(self.metrics), bar_format=LINE)
        self.log.info(text.replace(",  ", ", "))   # tqdm pads the rate for a bar's fixed width
        self.last_line = self.clock()

    def _draw(self) -> None:
        if self.bar is None:
            self.bar = tqdm(total=self.total, desc=self._desc(), file=sys.stderr, leave=False, dynamic_ncols=True)
        self.bar.total = self.total
        if self.done >= self.bar.n:
            self.bar.update(self.done - self.bar.n)
        else:
            self.bar.n = self.done
        if self.metrics:
            self.bar.set_postfix_str(metrics_text(self.metrics), refresh=False)
        self.bar.refresh()

    def _end_phase(self, how: str = " done") -> None:
        if self.phase is None:
            return
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.lines or self.bars:    # the phase's record: in the log, and left behind the bar on a terminal
            self._line(how)

    def _watch(self) -> None:
        while not self._stop.wait(POLL):
            self.tick()


@contextlib.contextmanager
def progress_bar(label: str, *, disable: bool = False) -> Iterator[ProgressReporter]:
    """A :class:`ProgressReporter` for one command: bars when stderr is a terminal, log lines
    when it is not, nothing when ``disable`` or when logging is set to hide info (``-q``).

    >>> with progress_bar("demo", disable=True) as report:
    ...     report("phase one", 1, 2)
    """
    shown = not disable and get_logger("progress").isEnabledFor(logging.INFO)
    terminal = sys.stderr.isatty()
    reporter = ProgressReporter(label, bars=shown and terminal, lines=shown and not terminal)
    try:
        yield reporter
    except BaseException:
        reporter.close(finished=False)
        raise
    reporter.close()
