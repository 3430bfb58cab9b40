"""The ``example:`` section of a draft (how ``symdsl check`` rebuilds the model) and its inputs.

* a transformers model: ``transformers: ClassName`` and the config values that differ from
  the config class's defaults;
* a timm model: ``timm:`` the class (or model name) with its constructor keyword arguments,
  taken from ``config=`` or the ``symdsl_config`` attribute that ``build_example`` sets;
* anything else: ``factory: module:function`` (given by the caller) with its keyword arguments.

Inputs are guessed from the model kind when not given: integer token ids below the
vocabulary size for token models, Gaussian images of the patch convolution's channels and
the model's image size for vision models.
"""
from __future__ import annotations

import inspect
from typing import Any, Mapping

import torch

from ..errors import UsageError
from ..spec.expr import evaluate

_DROP = {"transformers_version", "model_type", "architectures", "dtype", "torch_dtype", "use_cache"}
SEQ = 8


def library(model: torch.nn.Module) -> str:
    """Where a model class comes from: 'transformers', 'timm' or 'torch'.

    >>> library(torch.nn.Linear(2, 2))
    'torch'
    """
    module = type(model).__module__
    return "transformers" if module.startswith("transformers.") else "timm" if module.startswith("timm.") else "torch"


def transformers_config(model: torch.nn.Module) -> dict[str, Any]:
    """The config values of a transformers model that differ from its config class's defaults.

    >>> import transformers
    >>> cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=64)
    >>> sorted(transformers_config(transformers.GPT2LMHeadModel(cfg)))
    ['n_embd', 'n_head', 'n_layer', 'vocab_size']
    """
    config = model.config
    try:
        defaults = type(model).config_class().to_dict()
    except Exception:  # a config class without defaults for every field: keep everything
        defaults = {}
    missing = object()
    return {k: v for k, v in config.to_dict().items()
            if not k.startswith("_") and k not in _DROP and defaults.get(k, missing) != v}


def example_section(model: torch.nn.Module, *, factory: str | None = None, timm_name: str | None = None,
                    config: Mapping[str, Any] | None = None,
                    inputs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``example`` mapping for ``model`` (see the module docstring).

    >>> m = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 2))
    >>> example_section(m, factory="mymodels:tiny")
    {'factory': 'mymodels:tiny', 'config': {}, 'inputs': {'input': {'randint': [0, 10], 'shape': [2, 8]}}}
    """
    kind = library(model)
    if factory:
        section = {"factory": factory, "config": dict(config or getattr(model, "symdsl_config", None) or {})}
    elif kind == "transformers":
        section = {"transformers": type(model).__name__, "config": dict(config or transformers_config(model))}
    elif kind == "timm":
        cfg = config if config is not None else getattr(model, "symdsl_config", None)
        name = timm_name or (type(model).__name__ if cfg is not None else
                             (getattr(model, "pretrained_cfg", None) or {}).get("architecture"))
        if not name:
            raise UsageError(f"cannot tell how to rebuild this timm {type(model).__name__}: pass its constructor "
                             "arguments (--config JSON) or load it as timm:NAME")
        section = {"timm": name, "config": dict(cfg or {})}
    else:
        raise UsageError(f"cannot tell how to rebuild {type(model).__name__}: give its factory "
                         "('module:function') so that `symdsl check` can build it")
    section["inputs"] = dict(inputs) if inputs else guess_inputs(model)
    return section


def _forward_args(model: torch.nn.Module) -> list[str]:
    try:
        return [p for p in inspect.signature(model.forward).parameters]
    except (TypeError, ValueError):
        return []


def guess_inputs(model: torch.nn.Module) -> dict[str, Any]:
    """Random-input specs (``{name: {randint|randn, shape}}``) for ``model.forward``.

    >>> guess_inputs(torch.nn.Conv2d(3, 8, 2))
    Traceback (most recent call last):
    ...
    symdsl.errors.UsageError: cannot guess the inputs of Conv2d.forward(input); pass them as JSON, e.g. --inputs '{"x": {"randn": true, "shape": [2, 3, 32, 32]}}'
    >>> guess_inputs(torch.nn.Embedding(100, 4))
    {'input': {'randint': [0, 100], 'shape': [2, 8]}}
    """
    args = _forward_args(model)
    config = getattr(model, "config", None)
    if library(model) == "transformers" and config is not None:
        out = _transformers_inputs(config, args)
        if out:
            return out
    name = args[0] if args else "input"
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            sizes = [m.num_embeddings for m in model.modules() if isinstance(m, torch.nn.Embedding)]
            return {name: {"randint": [0, module.num_embeddings], "shape": [2, min([SEQ] + sizes)]}}
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Conv1d)):
            size = _image_size(model)
            if size is None:
                break
            spatial = list(size[:2]) if isinstance(module, torch.nn.Conv2d) else [size[0]]
            return {name: {"randn": True, "shape": [2, module.in_channels, *spatial]}}
        if isinstance(module, torch.nn.Linear):
            return {name: {"randn": True, "shape": [2, module.in_features]}}
    raise UsageError(f"cannot guess the inputs of {type(model).__name__}.forward({', '.join(args)}); "
                     "pass them as JSON, e.g. --inputs '{\"x\": {\"randn\": true, \"shape\": [2, 3, 32, 32]}}'")


def _transformers_inputs(config, args: list[str]) -> dict[str, Any]:
    """Text and image inputs from a transformers config. A two-tower model (CLIP) keeps them in
    ``text_config``/``vision_config``: sizes from there are written as numbers, since input specs
    name only top-level config keys; an encoder-decoder (T5) also gets ``decoder_input_ids``."""
    out: dict[str, Any] = {}
    text = getattr(config, "text_config", None) if not getattr(config, "vocab_size", None) else None
    text_config = text if text is not None else config
    vocab = getattr(text_config, "vocab_size", None)
    if "input_ids" in args and vocab:
        positions = [getattr(text_config, k, None) for k in ("n_positions", "max_position_embeddings")]
        seq = min([SEQ] + [p for p in positions if isinstance(p, int) and p > 0])
        bound = "vocab_size" if text is None else vocab
        out["input_ids"] = {"randint": [0, bound], "shape": [2, seq]}
        if "token_type_ids" in args and (getattr(text_config, "type_vocab_size", 0) or 0) > 1:
            out["token_type_ids"] = {"randint": [0, "type_vocab_size" if text is None else text_config.type_vocab_size],
                                     "shape": [2, seq]}
        if "decoder_input_ids" in args and getattr(config, "is_encoder_decoder", False):
            out["decoder_input_ids"] = {"randint": [0, bound], "shape": [2, seq]}
    vision = getattr(config, "vision_config", None) if not getattr(config, "image_size", None) else None
    vision_config = vision if vision is not None else config
    image = getattr(vision_config, "image_size", None)
    if "pixel_values" in args and image:
        size = image if isinstance(image, int) else image[0]
        out["pixel_values"] = {"randn": True, "shape": [2, getattr(vision_config, "num_channels", 3), size, size]}
    return out


def _image_size(model: torch.nn.Module):
    for owner in (model, getattr(model, "patch_embed", None)):
        size = getattr(owner, "img_size", None) if owner is not None else None
        if isinstance(size, int):
            return (size, size)
        if isinstance(size, (tuple, list)) and size:
            return tuple(size)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if cfg.get("input_size"):
        return tuple(cfg["input_size"][1:])
    return None


def materialize(inputs: Mapping[str, Any], names: Mapping[str, Any], *, seed: int = 0) -> dict[str, torch.Tensor]:
    """Tensors for input specs (shapes and bounds may name config values), float64 for randn.

    >>> materialize({"ids": {"randint": [0, "V"], "shape": [2, 3]}}, {"V": 5})["ids"].shape
    torch.Size([2, 3])
    """
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for key, item in inputs.items():
        shape = [evaluate(s, names) for s in item["shape"]]
        if item.get("randint") is not None:
            low, high = (evaluate(v, names) for v in item["randint"])
            out[key] = torch.randint(low, high, shape, generator=generator)
        else:
            out[key] = torch.randn(shape, generator=generator, dtype=torch.float64)
    return out
