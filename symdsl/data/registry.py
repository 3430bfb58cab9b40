"""The dataset registry: names to factories, and ``load_dataset("name[:ARG]", **options)``."""
from __future__ import annotations

import inspect
from types import MappingProxyType
from typing import Callable, Mapping

from ..errors import UsageError, suggest
from .base import Dataset
from .corpus import stdlib_text_dataset
from .digits import load_digits_dataset
from .masked import masked_text_file_dataset
from .text import text_file_dataset

# name -> factory(*[ARG], **options) -> Dataset. ARG is the text after "name:" in a reference.
# The built-in plugin contributes these; plugins add more (hook symdsl_datasets), and callers pass
# the combined table (``registries.datasets``) as ``datasets=``.
BUILTIN_DATASETS: Mapping[str, Callable[..., Dataset]] = MappingProxyType({
    "digits": load_digits_dataset,
    "text": text_file_dataset,
    "stdlib-text": stdlib_text_dataset,
    "mlm": masked_text_file_dataset,
})


def load_dataset(ref: str | Dataset, *, datasets: Mapping[str, Callable[..., Dataset]] = BUILTIN_DATASETS,
                 **options) -> Dataset:
    """Build the dataset a reference names: ``digits``, ``stdlib-text``, ``text:PATH``, ``mlm:PATH`` ...

    ``options`` are passed to the factory (``seed=``, ``block_size=``, ``tokenizer=DIR``, ...);
    an unknown name or option is an error with a suggestion. A :class:`Dataset` is returned as is.
    ``datasets``: the name table (default: the built-in ones; ``registries.datasets`` adds the
    plugins' datasets).

    >>> ds = load_dataset("digits", seed=0)
    >>> ds.name, ds.task, len(ds.test)
    ('digits', 'classification', 360)
    """
    if isinstance(ref, Dataset):
        if options:
            raise UsageError("options cannot be applied to an already built Dataset")
        return ref
    name, sep, arg = ref.partition(":")
    if name not in datasets:
        raise UsageError(f"unknown dataset '{name}'{suggest(name, datasets)}; known: {', '.join(sorted(datasets))}")
    factory = datasets[name]
    args = (arg,) if sep else ()
    _check_call(name, factory, args, options)
    return factory(*args, **options)


def _check_call(name: str, factory: Callable, args: tuple, options: dict) -> None:
    # Bind before calling, so a wrong option is reported as the user's mistake and a TypeError
    # raised inside the factory is never mistaken for one.
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(*args, **options)
    except TypeError as exc:
        params = signature.parameters
        positional = [p for p in params.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        keywords = [p for p in params if params[p].kind in (params[p].KEYWORD_ONLY, params[p].POSITIONAL_OR_KEYWORD)]
        unknown = [key for key in options if key not in params]
        if unknown:
            raise UsageError(f"dataset '{name}' has no option '{unknown[0]}'{suggest(unknown[0], keywords)}; "
                             f"options: {', '.join(keywords) or 'none'}") from None
        if args and not positional:
            raise UsageError(f"dataset '{name}' takes no argument after ':' (got '{name}:{args[0]}')") from None
        if not args and positional and positional[0].default is inspect.Parameter.empty:
            raise UsageError(f"dataset '{name}' needs an argument: '{name}:{positional[0].name.upper()}'") from None
        raise UsageError(f"dataset '{name}': {exc}") from None
