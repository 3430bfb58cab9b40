"""Which code a piece of data may make symdsl run: nothing, unless the user opts in.

A model record (``symdsl_model.json``) names the class that rebuilds the model. Without
``trust_code`` it may name only an ``nn.Module`` class of a library symdsl loads models with
(timm, transformers, torch.nn) or of a module a registered model loader declares
(:attr:`symdsl.models.ModelLoader.record_modules`); anything else (``subprocess:getoutput``, a
module beside the data) is refused before it is imported. ``trust_code=True`` (command line:
``--trust-code``) lifts the restriction, in the spirit of transformers' ``trust_remote_code``.
"""
from __future__ import annotations

import importlib
from typing import Any, Iterable

import torch

from ..errors import UsageError

# module prefixes whose nn.Module classes a record may always name
LIBRARY_MODULES = ("timm.", "transformers.", "torch.nn.")
TRUST_HINT = "pass --trust-code (Python: trust_code=True) only if you trust where it came from"


def untrusted(what: str, where: str) -> UsageError:
    """The error for code that data asks symdsl to run without the opt-in.

    >>> print(untrusted("'os:system'", "m/symdsl_model.json: class"))
    m/symdsl_model.json: class: 'os:system' would run code named in data; pass --trust-code (Python: trust_code=True) only if you trust where it came from
    """
    return UsageError(f"{where}: {what} would run code named in data; {TRUST_HINT}")


def record_class(path: str, where: str, *, trust_code: bool = False, modules: Iterable[str] = ()) -> Any:
    """The class a model record names (``module:QualName``), refusing what the record may not name.

    Without ``trust_code`` the module must start with one of :data:`LIBRARY_MODULES` or
    ``modules`` (registered loaders') and the object must be an ``nn.Module`` class; the check
    on the name happens before anything is imported.

    >>> record_class("torch.nn.modules.linear:Linear", "m/symdsl_model.json: class").__name__
    'Linear'
    >>> record_class("subprocess:getoutput", "m/symdsl_model.json: class")
    Traceback (most recent call last):
    ...
    symdsl.errors.UsageError: m/symdsl_model.json: class: 'subprocess:getoutput' would run code named in data; pass --trust-code (Python: trust_code=True) only if you trust where it came from
    """
    if not isinstance(path, str) or ":" not in path:
        raise UsageError(f"{where}: expected 'module:ClassName', got {path!r}; the folder was not written by symdsl "
                         "or was edited")
    allowed = tuple(LIBRARY_MODULES) + tuple(m if m.endswith(".") else m + "." for m in modules)
    module = path.partition(":")[0] + "."
    if not trust_code and not module.startswith(allowed):
        raise untrusted(f"'{path}'", where)
    module_name, _, attribute = path.partition(":")
    try:   # only what is installed: never the current folder or the data's folder
        obj = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, ValueError, AttributeError) as exc:
        raise UsageError(f"{where}: cannot import '{path}' ({exc}); install the package that defines it") from None
    if not trust_code and not (isinstance(obj, type) and issubclass(obj, torch.nn.Module)):
        raise untrusted(f"'{path}' (not a model class)", where)
    return obj
