"""The spec language's structure, as pydantic models (also the source of `symdsl schema`).

Only the *shape* of a spec lives here; meaning (names bound, sizes, coverage) is
checked when the spec is resolved against a model (see ``resolve.py``).
"""
from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError, field_validator

from ..errors import Problem, SpecError, suggest
from .source import SpecSource

LANGUAGE_VERSION = 1


def _expr(value: Any) -> Any:
    # one clear message instead of one per union member ('size.int: ...', 'size.str: ...'); no silent
    # coercion of 4.0 or true to an integer
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        shown = f"{type(value).__name__} {value!r}" if value is not None else "nothing (null)"
        raise ValueError(f"expected an integer or a dimension expression such as \"n_embd // n_head\", got {shown}")
    return value


# an integer or a dimension expression such as "n_embd // n_head"
Expr = Annotated[Union[StrictInt, StrictStr], BeforeValidator(_expr)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Matches(_Strict):
    """Which model classes a spec applies to (class-name globs, per library)."""

    transformers: list[str] = Field(default_factory=list, description="transformers class names, e.g. GPT2LMHeadModel")
    timm: list[str] = Field(default_factory=list, description="timm class names or model names (globs allowed), e.g. VisionTransformer, vit_*")
    torch: list[str] = Field(default_factory=list, description="any torch.nn.Module class name (globs allowed)")
    config: dict[str, Union[StrictBool, StrictInt, StrictStr, None]] = Field(
        default_factory=dict, description="config values the model must have (e.g. do_layer_norm_before: true): "
                                          "a model of a matched class with other values is not matched, and is refused")


class RandomInput(_Strict):
    """A random input tensor for the numeric check: integer tokens or Gaussian floats."""

    shape: list[Expr] = Field(description="tensor shape; entries may be dimension expressions")
    randint: list[Expr] | None = Field(default=None, description="[low, high): integer tokens in this range")
    randn: bool = Field(default=False, description="standard normal floats (in the model's dtype)")


class Example(_Strict):
    """A tiny random instance of the architecture, built for `symdsl check`."""

    transformers: str | None = Field(default=None, description="transformers model class, built from its config class")
    timm: str | None = Field(default=None, description="timm model class in timm.models (e.g. VisionTransformer), or a timm model name")
    factory: str | None = Field(default=None, description="'module:function' returning an nn.Module")
    config: dict[str, Any] = Field(default_factory=dict, description="config / constructor keyword arguments")
    inputs: dict[str, RandomInput] = Field(description="keyword arguments passed to forward()")
    output: str | None = Field(default=None, description="which output to compare (attribute or key); default: the first")


class Site(_Strict):
    """A vector space on which a group acts."""

    group: str = Field(description="group kind: permutation, semi_permutation, orthogonal, stiefel, invertible, rotary, or a plugin kind")
    size: Expr = Field(description="dimension of the space (output side for rectangular kinds)")
    size_in: Expr | None = Field(default=None, description="input-side size, rectangular kinds only")
    per: str | None = Field(default=None, description="one element per index of this site (a permutation site) or dimension")
    preserve: str | None = Field(default=None, description="orthogonal only: 'ones' keeps the all-ones vector fixed (LayerNorm-safe)")
    pairs: str | None = Field(default=None, description="rotary only: the RoPE pair layout, 'half' (rotate_half, i with i + n/2; "
                              "the default) or 'interleaved' (2i with 2i + 1, GPT-J)")
    doc: str | None = Field(default=None, description="free text shown in reports")


class Head(_Strict):
    """Tensors that exist only in some of the matched classes (a task head): all or none.

    Head names are written from the model root; ``${prefix}`` stands for the backbone prefix
    chosen from ``prefix``. A head's canonicalize steps run before the backbone's. ``requires``
    and ``unless`` choose between heads that share tensor names (BERT's ``classifier.weight``
    reads the pooler in sequence classification and every token in token classification).
    """

    sites: dict[str, Site] = Field(default_factory=dict, description="sites that exist only with this head")
    requires: list[str] = Field(default_factory=list, description="tensors the model must also have for this head "
                                "to apply (tells apart heads that share tensor names, e.g. a classifier that reads the "
                                "pooler from one that reads every token)")
    unless: list[str] = Field(default_factory=list, description="the head does not apply to a model that has any of "
                              "these tensors")
    tensors: dict[str, str] = Field(default_factory=dict)
    invariant: list[str] = Field(default_factory=list)
    tied: list[list[str]] = Field(default_factory=list)
    canonicalize: list[dict[str, Any]] = Field(default_factory=list)
    outputs: dict[str, str] = Field(default_factory=dict)


class Canonical(_Strict):
    """The tensors of the canonical form, when canonicalization renames or reshapes parameters.

    Without this section one set of bindings describes the model before and after the
    ``canonicalize`` steps. With it, ``tensors``/``invariant`` describe the original model as
    the steps read it (coverage is not required there), and the canonical form's bindings are
    those entries whose tensors survive canonicalization, overridden and extended by these.
    """

    tensors: dict[str, str] = Field(default_factory=dict, description="tensor of the canonical form -> axis pattern")
    invariant: list[str] = Field(default_factory=list, description="tensors of the canonical form no site touches")


class SpecModel(_Strict):
    """A symdsl spec file (language version 1)."""

    symdsl: StrictInt = Field(description="spec language version; must be 1", json_schema_extra={"const": LANGUAGE_VERSION})
    name: str = Field(description="unique spec name, e.g. hf-gpt2")
    description: str | None = None
    matches: Matches = Field(default_factory=Matches)
    example: Example | None = None
    prefix: list[str] = Field(default_factory=lambda: [""], description="alternative prefixes of the backbone tensor names, tried in order")
    dims: dict[str, Expr] = Field(default_factory=dict, description="named sizes read from the model config")
    repeat: dict[str, Expr] = Field(default_factory=dict, description="template variables: ${i} ranges over 0..value-1")
    canonicalize: list[dict[str, Any]] = Field(default_factory=list, description="function-preserving rewrites run before any transform")
    sites: dict[str, Site] = Field(default_factory=dict)
    tensors: dict[str, str] = Field(default_factory=dict, description="tensor name -> axis pattern")
    invariant: list[str] = Field(default_factory=list, description="tensors no site touches")
    tied: list[list[str]] = Field(default_factory=list, description="groups of names that are one shared parameter")
    outputs: dict[str, str] = Field(default_factory=dict, description="model outputs that transform (equivariant): name -> axis pattern")
    heads: dict[str, Head] = Field(default_factory=dict)
    canonical: Canonical | None = Field(default=None, description="bindings of the canonical form, for canonicalizers "
                                        "that rename or reshape parameters (architecture-changing routes)")

    @field_validator("symdsl")
    @classmethod
    def _version(cls, value: int) -> int:
        if value != LANGUAGE_VERSION:
            raise ValueError(f"unsupported spec language version {value}; this symdsl reads version {LANGUAGE_VERSION}")
        return value


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model an annotation holds directly (X, X | None), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that validates the mapping at key path ``loc`` (None if not a model)."""
    model: Any = SpecModel
    annotation: Any = None
    for part in loc:
        if annotation is None:
            if model is None or not isinstance(part, str) or part not in model.model_fields:
                return None
            annotation = model.model_fields[part].annotation
        else:  # inside a dict or list: step to the element type
            origin = typing.get_origin(annotation)
            args = typing.get_args(annotation)
            if origin is dict and len(args) == 2:
                annotation = args[1]
            elif origin is list and args:
                annotation = args[0]
            else:
                return None
        found = _model_in(annotation)
        if found is not None and typing.get_origin(annotation) not in (dict, list):
            model, annotation = found, None
    return model if annotation is None else None


_TYPE_WORDS = {"dict_type": "a mapping (key: value)", "model_type": "a mapping (key: value)",
               "model_attributes_type": "a mapping (key: value)", "list_type": "a list",
               "string_type": "a string", "int_type": "an integer", "int_parsing": "an integer",
               "int_from_float": "an integer", "bool_type": "true or false", "bool_parsing": "true or false"}


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


def validate_structure(source: SpecSource) -> SpecModel:
    """Check a parsed document against the spec schema; raise SpecError with positions."""
    if not isinstance(source.data, dict):
        raise SpecError([source.problem((), "a spec must be a YAML mapping at the top level",
                                        hint="start the file with 'symdsl: 1' and 'name: ...'")])
    try:
        return SpecModel.model_validate(source.data)
    except ValidationError as exc:
        errors = exc.errors()
    problems = []
    # a misspelt required key shows up twice (unknown 'sise' + missing 'size'): report it once
    explained: set[tuple] = set()
    for err in errors:
        loc = tuple(err["loc"])
        if err["type"] == "extra_forbidden":
            model = _model_at(loc[:-1])
            fields = list(model.model_fields) if model is not None else []
            close = suggest(str(loc[-1]), fields)
            if close:
                explained.add(loc[:-1] + (close.split("'")[1],))
    for err in errors:
        loc = tuple(err["loc"])
        hint = ""
        if loc[-1:] == ("[key]",):  # a mapping key of the wrong type (e.g. a number)
            problems.append(source.problem(loc[:-1], f"keys here must be strings, got {_describe(err.get('input'))}",
                                           "quote the key"))
            continue
        if err["type"] == "extra_forbidden":
            model = _model_at(loc[:-1])
            fields = list(model.model_fields) if model is not None else []
            message = f"unknown key '{loc[-1]}'{suggest(str(loc[-1]), fields)}"
            if fields:
                hint = f"keys allowed here: {', '.join(fields)} (see `symdsl schema`)"
        elif err["type"] == "missing":
            if loc in explained:
                continue
            message = f"required key '{loc[-1]}' is missing"
        elif err["type"] in _TYPE_WORDS:
            message = f"expected {_TYPE_WORDS[err['type']]}, got {_describe(err.get('input'))}"
        else:
            message = err["msg"].removeprefix("Value error, ")
        if loc[:1] == ("symdsl",) and err["type"] != "missing":
            hint = hint or "the first line of a spec reads 'symdsl: 1'"
        problems.append(source.problem(loc, message, hint))
    raise SpecError(problems) from None


def json_schema() -> dict:
    """The spec language as JSON Schema (draft 2020-12), for editors and CI."""
    schema = SpecModel.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "symdsl spec"
    return schema
