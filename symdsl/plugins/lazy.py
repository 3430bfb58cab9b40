"""A name -> object registry that loads the plugins the first time anyone reads it."""
from __future__ import annotations

from typing import Any


class LazyRegistry(dict):
    """A dict whose readers first make sure every plugin has registered its entries.

    Writers (``register_*`` functions) use :meth:`add`, which does not trigger loading, so
    plugins can fill the registry while it is being loaded.
    """

    def __init__(self, what: str):
        super().__init__()
        self.what = what
        self.origins: dict[str, str] = {}

    def _load(self) -> None:
        from .manager import ensure_loaded

        ensure_loaded()

    def add(self, name: str, obj: Any, origin: str = "symdsl") -> Any:
        if dict.__contains__(self, name):
            raise ValueError(f"{self.what} '{name}' is registered twice: by {self.origins.get(name, '?')} and by {origin}")
        dict.__setitem__(self, name, obj)
        self.origins[name] = origin
        return obj

    def __getitem__(self, key):
        self._load()
        return dict.__getitem__(self, key)

    def __contains__(self, key) -> bool:
        self._load()
        return dict.__contains__(self, key)

    def __iter__(self):
        self._load()
        return dict.__iter__(self)

    def __len__(self) -> int:
        self._load()
        return dict.__len__(self)

    def get(self, key, default=None):
        self._load()
        return dict.get(self, key, default)

    def keys(self):
        self._load()
        return dict.keys(self)

    def values(self):
        self._load()
        return dict.values(self)

    def items(self):
        self._load()
        return dict.items(self)

    def clear_plugins(self) -> None:
        """Forget everything (used when the plugin set is reloaded, e.g. with a plugin blocked)."""
        dict.clear(self)
        self.origins.clear()
