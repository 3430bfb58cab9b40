"""Where symdsl keeps what it caches between runs."""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$SYMDSL_CACHE``, else ``$XDG_CACHE_HOME/symdsl``, else ``~/.cache/symdsl``.

    >>> cache_root().name in ("symdsl",) or "SYMDSL_CACHE" in os.environ
    True
    """
    root = os.environ.get("SYMDSL_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"),
                                                          "symdsl")
    return Path(root)
