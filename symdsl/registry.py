"""Registries as values: what the loaded plugins contribute, by category, with origins.

A :class:`Registries` value is built once at the boundary (``symdsl.plugins.load()``, which the
public API and the command line call) and passed down to the code that looks things up by
name: spec binding (group kinds, canonicalizers), the static check and infer (op rules,
capture backends), model loading (loaders), evaluation (datasets), matching and merging.
Nothing in the core reads a global registry, so the core never imports the plugin manager,
and a hand-registered object keeps its origin (``Registries.add``) however plugins are
blocked.

This module imports nothing from the rest of symdsl but its errors: every other core module
may depend on it.

>>> reg = Registries.empty().add("matcher", "identity", object(), origin="my-notebook")
>>> reg.matchers.origin("identity")
'my-notebook'
>>> reg.matchers.lookup("identiy")
Traceback (most recent call last):
...
symdsl.errors.UnknownNameError: unknown matcher 'identiy'; did you mean 'identity'? known: identity (`symdsl plugins` lists them)
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Generic, Iterable, Iterator, Mapping, TypeVar

from .errors import UnknownNameError, suggest

T = TypeVar("T")


@dataclass(frozen=True)
class Contribution:
    """One thing a plugin contributed: its category, name, object, plugin and one-line description."""

    category: str
    name: str
    obj: Any
    plugin: str
    description: str = ""


def describe(obj: Any) -> str:
    """The first line of an object's ``description`` attribute or docstring ('' if neither)."""
    text = getattr(obj, "description", None) or getattr(obj, "__doc__", None) or ""
    text = text.strip() if isinstance(text, str) else ""
    return text.splitlines()[0] if text else ""


class Registry(Mapping[str, T], Generic[T]):
    """A read-only ``name -> object`` map of one category, remembering who contributed each name.

    Two contributions of one name are an error that names both contributors.

    >>> r = Registry("merger", [("average", 1, "symdsl-builtins")])
    >>> r["average"], r.origin("average"), list(r)
    (1, 'symdsl-builtins', ['average'])
    >>> Registry("merger", [("average", 1, "a"), ("average", 2, "b")])
    Traceback (most recent call last):
    ...
    ValueError: merger 'average' is contributed twice: by a and by b
    """

    def __init__(self, category: str, entries: Iterable[tuple[str, T, str]] = (), *, hint: str = ""):
        self.category = category
        self.hint = hint          # appended to "unknown NAME" errors, e.g. where to list them
        self._objects: dict[str, T] = {}
        self._origins: dict[str, str] = {}
        for name, obj, origin in entries:
            if name in self._objects:
                raise ValueError(f"{category} '{name}' is contributed twice: by {self._origins[name]} and by {origin}")
            self._objects[name] = obj
            self._origins[name] = origin

    def __getitem__(self, name: str) -> T:
        return self._objects[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._objects)

    def __len__(self) -> int:
        return len(self._objects)

    def __repr__(self) -> str:
        return f"<{self.category} registry: {', '.join(self._objects) or 'empty'}>"

    def origin(self, name: str) -> str:
        """The plugin (or ``origin=`` of a hand registration) that contributed ``name``."""
        return self._origins[name]

    def entries(self) -> list[tuple[str, T, str]]:
        """``(name, object, origin)`` in contribution order."""
        return [(n, o, self._origins[n]) for n, o in self._objects.items()]

    def lookup(self, name: str) -> T:
        """The object called ``name``; :class:`~symdsl.errors.UnknownNameError` with a suggestion if none."""
        if name in self._objects:
            return self._objects[name]
        known = ", ".join(sorted(self._objects)) or "none"
        hint = suggest(str(name), self._objects) or ";"      # "; did you mean 'x'?"
        raise UnknownNameError(f"unknown {self.category} '{name}'{hint} known: {known}{self.hint}")

    def added(self, name: str, obj: T, origin: str, *, replace: bool = False) -> "Registry[T]":
        """A new registry with ``name`` added (``replace=True``: or replaced)."""
        entries = [e for e in self.entries() if not (replace and e[0] == name)] + [(name, obj, origin)]
        return Registry(self.category, entries, hint=self.hint)


# category name (as listed by `symdsl plugins` and accepted by Registries.add) -> field of Registries
CATEGORIES = {
    "group kind": "group_kinds",
    "canonicalizer": "canonicalizers",
    "matcher": "matchers",
    "merger": "mergers",
    "op rule": "op_rules",
    "capture backend": "capture_backends",
    "model loader": "model_loaders",
    "spec folder": "spec_folders",
    "dataset": "datasets",
}
HINTS = {"matcher": " (`symdsl plugins` lists them)", "merger": " (`symdsl plugins` lists them)"}


def _empty(category: str) -> Registry:
    return Registry(category, hint=HINTS.get(category, ""))


def _field(category: str):
    return field(default_factory=lambda: _empty(category))


@dataclass(frozen=True)
class Registries:
    """Everything plugins contribute, one :class:`Registry` per category; an immutable value.

    ``spec_folders`` maps a folder's path (as text) to the folder; ``model_loaders`` maps a
    loader's name to the loader, in the order they are asked.
    """

    group_kinds: Registry = _field("group kind")
    canonicalizers: Registry = _field("canonicalizer")
    matchers: Registry = _field("matcher")
    mergers: Registry = _field("merger")
    op_rules: Registry = _field("op rule")
    capture_backends: Registry = _field("capture backend")
    model_loaders: Registry = _field("model loader")
    spec_folders: Registry = _field("spec folder")
    datasets: Registry = _field("dataset")
    plugins: tuple[str, ...] = ()        # names of the plugins that were loaded, in order
    blocked: tuple[str, ...] = ()        # names that were blocked

    @classmethod
    def empty(cls) -> "Registries":
        """No plugins at all (build on it with :meth:`add`)."""
        return cls()

    def add(self, category: str, name: str, obj: Any, origin: str = "user", *, replace: bool = False) -> "Registries":
        """A new value with one more contribution (``category`` as in :data:`CATEGORIES`).

        >>> Registries.empty().add("dataset", "mine", dict).datasets.origin("mine")
        'user'
        """
        if category not in CATEGORIES:
            raise ValueError(f"unknown category '{category}'{suggest(category, CATEGORIES)}; "
                             f"known: {', '.join(CATEGORIES)}")
        attribute = CATEGORIES[category]
        return replace_field(self, attribute, getattr(self, attribute).added(name, obj, origin, replace=replace))

    def contributions(self) -> list[Contribution]:
        """Every contribution with its origin (what ``symdsl plugins`` lists)."""
        out = []
        for category, attribute in CATEGORIES.items():
            for name, obj, origin in getattr(self, attribute).entries():
                out.append(Contribution(category, name, obj, origin, describe(obj) if category != "spec folder" else ""))
        return out

    def folders(self) -> list[tuple[Path, str]]:
        """``(folder, origin)`` for every spec folder."""
        return [(Path(obj), origin) for _, obj, origin in self.spec_folders.entries()]


def replace_field(registries: Registries, attribute: str, value: Registry) -> Registries:
    """``registries`` with one category replaced (a frozen dataclass copy)."""
    if attribute not in {f.name for f in fields(Registries)}:
        raise AttributeError(attribute)
    changes: dict[str, Any] = {attribute: value}
    return replace(registries, **changes)


__all__ = ["CATEGORIES", "Contribution", "Registries", "Registry", "describe"]
