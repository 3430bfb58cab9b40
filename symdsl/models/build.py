"""Build a spec's tiny random example model and the random inputs to run it on."""
from __future__ import annotations

import contextlib
import importlib
import os
import sys
from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import SymdslError, UsageError
from ..spec.expr import ExprError, evaluate
from ..spec.load import Spec
from .trust import untrusted


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' config warnings while building tiny test models."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def import_object(path: str, search: tuple[str, ...] = ()) -> Any:
    """Import ``package.module:attribute`` (a factory or class).

    A module that is not importable as installed is looked up again from the current
    directory and from ``search`` folders (e.g. the spec file's folder), so a local
    ``examples/my_model.py`` works without setting PYTHONPATH. Only for names the user gave
    (a command-line REF) or trusted (``--trust-code``); see :mod:`symdsl.models.trust`.

    >>> import_object("torch.nn:Linear").__name__
    'Linear'
    """
    module_name, sep, attribute = path.partition(":")
    if not sep or not attribute or not module_name or module_name.startswith("."):
        raise UsageError(f"'{path}' is not of the form 'module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as first:
        module = None
        for folder in (os.getcwd(), *search):
            if folder in sys.path:
                continue
            sys.path.insert(0, folder)
            try:
                module = importlib.import_module(module_name)
                break
            except ImportError:
                sys.path.remove(folder)
        if module is None:
            raise UsageError(f"cannot import module '{module_name}': {first}") from None
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise UsageError(f"module '{module_name}' has no attribute '{attribute}'") from None


def perturb_parameters(model: torch.nn.Module, *, seed: int = 0, scale: float = 0.1) -> torch.nn.Module:
    """Add N(0, scale^2) noise to every floating-point parameter, in place.

    Fresh models start with zero biases and unit norm gains; a spec that binds a bias or a
    gain wrongly would still pass a check on them. After this, nothing is trivially zero or one.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.is_floating_point():
                noise = torch.randn(param.shape, generator=generator, dtype=torch.float64)
                param.add_((scale * noise).to(param.dtype))
    return model


def build_example(spec: Spec, *, seed: int = 0, perturb: bool = True) -> torch.nn.Module:
    """Build the spec's ``example`` model with random weights (seeded), in eval mode.

    With ``perturb`` (default) every parameter gets small noise (see :func:`perturb_parameters`).

    >>> from symdsl.plugins import load
    >>> # model = build_example(find_spec("hf-gpt2", load()))
    """
    example = spec.document.example
    if example is None:
        raise UsageError(f"spec '{spec.name}' ({spec.file}) has no 'example' section; pass --model REF")
    torch.manual_seed(seed)
    config = dict(example.config)
    if example.transformers:
        try:
            import transformers
        except ImportError:
            raise UsageError("this spec's example needs transformers: pip install 'symdsl[hf]'") from None
        cls = getattr(transformers, example.transformers, None)
        if cls is None:
            raise UsageError(f"{spec.file}: example.transformers: transformers has no class '{example.transformers}'")
        with quiet_transformers():
            model = cls(cls.config_class(**config))
    elif example.timm:
        try:
            import timm
        except ImportError:
            raise UsageError("this spec's example needs timm: pip install 'symdsl[timm]'") from None
        cls = _timm_class(example.timm)
        model = cls(**config) if cls is not None else timm.create_model(example.timm, pretrained=False, **config)
        model.symdsl_config = config
    elif example.factory:
        if not spec.trusted:
            line, col = spec.source.where(("example", "factory"))
            raise untrusted(f"'{example.factory}' (a factory the spec names)",
                            f"{spec.file}:{line}:{col}: example.factory")
        model = import_object(example.factory, (str(Path(spec.file).resolve().parent),
                                                 str(Path(spec.file).resolve().parent.parent)))(**config)
        if not isinstance(model, torch.nn.Module):
            raise UsageError(f"{spec.file}: example.factory: '{example.factory}' returned {type(model).__name__}, "
                             "not a torch.nn.Module")
        model.symdsl_config = config
    else:
        raise UsageError(f"{spec.file}: example: give one of 'transformers', 'timm' or 'factory'")
    if perturb:
        perturb_parameters(model, seed=seed)
    return model.eval()


def _timm_class(name: str):
    import timm.models

    for module_name in dir(timm.models):
        module = getattr(timm.models, module_name)
        cls = getattr(module, name, None)
        if isinstance(cls, type) and issubclass(cls, torch.nn.Module):
            return cls
    return getattr(timm.models, name, None) if isinstance(getattr(timm.models, name, None), type) else None


def make_inputs(spec: Spec, names: Mapping[str, Any], *, seed: int = 0, dtype=torch.float64,
                device=None) -> dict[str, torch.Tensor]:
    """Random forward() keyword arguments from the spec's ``example.inputs`` (dims and config in ``names``)."""
    example = spec.document.example
    if example is None or not example.inputs:
        raise UsageError(f"spec '{spec.name}' declares no example.inputs to run the model on")
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for key, item in example.inputs.items():
        try:
            shape = [evaluate(s, names) for s in item.shape]
            bounds = [evaluate(v, names) for v in item.randint] if item.randint is not None else None
        except ExprError as exc:
            line, col = spec.source.where(("example", "inputs", key))
            raise UsageError(f"{spec.file}:{line}:{col}: example.inputs.{key}: {exc} (inputs may use the model "
                             "config's keys and the spec's dims)") from None
        if bounds is not None:
            low, high = bounds
            tensor = torch.randint(low, high, shape, generator=generator)
        elif item.randn:
            tensor = torch.randn(shape, generator=generator, dtype=dtype)
        else:
            raise UsageError(f"{spec.file}: example.inputs.{key}: give 'randint: [low, high]' or 'randn: true'")
        out[key] = tensor.to(device) if device is not None else tensor
    return out


def select_outputs(result: Any, primary: str | None, declared: list[str]) -> dict[str, torch.Tensor]:
    """Pick named tensors from whatever forward() returned (tensor, tuple, dict or ModelOutput).

    The primary output is ``primary`` if given, else the first entry (named ``"output"`` when
    the result has no names). Each ``declared`` name (an equivariant output of the spec) is
    added when the result has it.
    """
    def lookup(name):
        if isinstance(result, Mapping) and name in result:
            return result[name]
        value = getattr(result, name, None)
        return value if isinstance(value, torch.Tensor) else None

    out: dict[str, torch.Tensor] = {}
    if primary:
        value = lookup(primary)
        if value is None:
            raise SymdslError(f"model output has no '{primary}' (example.output in the spec)")
        out[primary] = value
    elif isinstance(result, torch.Tensor):
        out["output"] = result
    elif isinstance(result, Mapping):
        key = next(iter(result.keys()))
        out[key] = result[key]
    elif isinstance(result, (tuple, list)) and result and isinstance(result[0], torch.Tensor):
        out["output"] = result[0]
    else:
        raise SymdslError(f"cannot find a tensor in the model output of type {type(result).__name__}")
    for name in declared:
        value = lookup(name)
        if value is not None:
            out[name] = value
    return out
