"""Functions of the C library that torch does not expose (``madvise``, glibc's ``malloc_trim``).

Memory bounds on large checkpoints rely on them (:mod:`symdsl.models.pages`, weight matching's
heap trim); where the platform has no such function the callers skip that step, so a result
never depends on them, only the resident set does.
"""
from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any


def libc_function(name: str, argtypes: tuple | None = None) -> Any:
    """The C library's function ``name`` (with ``argtypes`` set when given), or None where there is none.

    >>> libc_function("no_such_function_anywhere") is None
    True
    """
    try:
        library = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    except OSError:
        return None
    function = getattr(library, name, None)
    if function is not None and argtypes is not None:
        function.argtypes = argtypes
    return function
