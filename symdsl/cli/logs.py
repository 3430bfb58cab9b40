"""The command line's logging: one handler on the ``symdsl`` logger, writing to stderr.

Status lines (notes, progress, errors) go through logging so that ``-q`` (warnings and errors)
and ``-v`` (debug) choose how much of them a run shows; results (tables, JSON) go to stdout
with ``print`` and are never filtered.
"""
from __future__ import annotations

import logging
import sys

from tqdm import tqdm

LOGGER = "symdsl"
LEVELS = {"quiet": logging.WARNING, "normal": logging.INFO, "verbose": logging.DEBUG}


class _StderrHandler(logging.Handler):
    """Writes each record to the *current* ``sys.stderr`` through ``tqdm.write``.

    The stream is looked up per record (a test or a caller may replace ``sys.stderr``), and
    ``tqdm.write`` lifts a progress bar on the terminal out of the way of the line.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:   # logging's contract: a failing handler must not break the program
            self.handleError(record)


class _Formatter(logging.Formatter):
    """Info lines as they are; other levels prefixed with theirs (``warning: ...``, ``debug: ...``)."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno in (logging.INFO, logging.ERROR):   # error lines already start "symdsl CMD:"
            return text
        return f"{record.levelname.lower()}: {text}"


def configure(verbosity: str = "normal") -> logging.Logger:
    """Point the ``symdsl`` logger at stderr with the level of ``verbosity`` (quiet, normal, verbose).

    Calling it again replaces the handler it installed (one command line per process, but tests
    run many).

    >>> configure("quiet").getEffectiveLevel() == logging.WARNING
    True
    """
    logger = logging.getLogger(LOGGER)
    for handler in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(_Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(LEVELS[verbosity])
    return logger


def get_logger(name: str = "") -> logging.Logger:
    """The ``symdsl`` logger (or its child ``symdsl.NAME``).

    >>> get_logger("align").name
    'symdsl.align'
    """
    return logging.getLogger(f"{LOGGER}.{name}" if name else LOGGER)
