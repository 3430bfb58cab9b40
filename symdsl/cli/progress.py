"""Progress shown on stderr for long commands (tqdm), silent when not a terminal or disabled."""
from __future__ import annotations

import contextlib
import sys

from tqdm import tqdm


@contextlib.contextmanager
def progress_bar(label: str, *, disable: bool = False):
    """Yield a callback ``update(done, total)`` that drives a tqdm bar on stderr."""
    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=label, file=sys.stderr, leave=False,
                       disable=disable or not sys.stderr.isatty())
        bar.n = done
        bar.refresh()

    try:
        yield update
    finally:
        if bar is not None:
            bar.close()
