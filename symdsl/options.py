"""Declared options of plugins (matchers, mergers): one pydantic model per plugin, checked before any work.

A matcher or merger declares what ``**options`` it takes as a :class:`PluginOptions` subclass on
its class attribute ``Options``: names, types, ranges and defaults in one place. Callers
(:func:`check_options`, the API and the command line before any model is loaded) and the
plugin itself (:meth:`PluginOptions.parse`) validate with it, so a bad value is refused with
one message naming the option, the value and every valid option, never deep inside the run.

Command-line values arrive as YAML scalars (``--option steps=200`` gives ``200``); pydantic
coerces text to the declared type (``"200"`` -> 200) and refuses what does not fit. NaN and
infinity are refused for every float, and ``true``/``false`` are refused where a number is due.

A plugin without ``Options`` (``Options = None``, a third party's matcher written before options
were declared) gets its options passed through unchecked: it validates them itself.

>>> from pydantic import Field
>>> class Demo(PluginOptions):
...     steps: int = Field(1000, ge=1, description="training steps")
...     lr: float = Field(0.003, gt=0)
>>> Demo.parse({"steps": "20"}, "matcher 'demo'").steps
20
>>> Demo.parse({"steps": "abc"}, "matcher 'demo'")
Traceback (most recent call last):
...
symdsl.options.OptionsError: matcher 'demo': option steps='abc' is not an integer; options: steps (int >= 1, default 1000), lr (float > 0, default 0.003)
"""
from __future__ import annotations

import types
import typing
from typing import Annotated, Any, ClassVar, Literal, Mapping

import annotated_types
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic.fields import FieldInfo

from .errors import UsageError, suggest


class OptionsError(UsageError):
    """A plugin option that is unknown or does not fit its declared type or range."""


class PluginOptions(BaseModel):
    """Base of a plugin's declared options: unknown names, NaN/inf and booleans-as-numbers are refused.

    Subclasses declare fields with ``pydantic.Field(default, ge=..., description=...)``; the
    description is what ``symdsl plugins`` and the error messages show beside the type.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, arbitrary_types_allowed=True, frozen=True)
    python_only: ClassVar[frozenset[str]] = frozenset()   # options that only a Python caller can give (objects)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic's lax mode reads True as 1; "steps=true" is a mistake, not a step count
        if isinstance(value, bool) and info.field_name is not None:
            allowed = _flat(cls.model_fields[info.field_name].annotation)
            if bool not in allowed and Any not in allowed:
                raise ValueError("is a boolean, not a number")
        return value

    @classmethod
    def parse(cls, values: Mapping[str, Any], owner: str) -> "PluginOptions":
        """``values`` validated (coerced, defaults filled); :class:`OptionsError` naming ``owner`` otherwise."""
        try:
            return cls.model_validate(dict(values))
        except ValidationError as exc:
            problems = [_problem(cls, error) for error in exc.errors()]
            raise OptionsError(f"{owner}: {'; '.join(problems)}; options: {describe_options(cls)}") from None

    def given(self) -> dict[str, Any]:
        """The options the caller set, coerced to their declared types (defaults left out)."""
        return {name: getattr(self, name) for name in self.model_fields_set}


def _device(value: Any) -> Any:
    """A device name (``cpu``, ``cuda:1``) or ``torch.device`` as a ``torch.device``; None stays None."""
    if value is None:
        return None
    import torch      # only where a device is declared: this module stays light for the registry

    try:
        return torch.device(value)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError("is not a device (cpu, cuda or cuda:N)") from None


def shown_as(text: str) -> Any:
    """Field metadata: how ``symdsl plugins`` and errors write an option's type (for object-valued options)."""
    return Field(json_schema_extra={"shown_as": text})


Device = Annotated[Any, BeforeValidator(_device), shown_as("device")]   # a declared option's device type


def declared(plugin: Any) -> type[PluginOptions] | None:
    """The plugin's declared options model, or None for a plugin that declares none.

    >>> class Plain: pass
    >>> declared(Plain()) is None
    True
    """
    options = getattr(plugin, "Options", None)
    return options if isinstance(options, type) and issubclass(options, PluginOptions) else None


def check_options(plugin: Any, owner: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` checked against the plugin's declared options and coerced; passed through if it declares none.

    >>> class Plain: Options = None
    >>> check_options(Plain(), "matcher 'plain'", {"anything": 1})
    {'anything': 1}
    """
    options = declared(plugin)
    return dict(values) if options is None else options.parse(values, owner).given()


def describe_options(options: type[PluginOptions] | None, *, details: bool = False) -> str:
    """Every option as ``name (type range, default d)``, comma-separated ('none' when there are none).

    ``details`` adds each option's description after a colon, one option per line.

    >>> from pydantic import Field
    >>> class Demo(PluginOptions):
    ...     validation: float = Field(0.1, gt=0, lt=1, description="held-out fraction")
    ...     freeze: tuple[str, ...] = ()
    >>> describe_options(Demo)
    'validation (float in (0, 1), default 0.1), freeze (list of text, default [])'
    >>> describe_options(Demo, details=True).splitlines()[0]
    'validation (float in (0, 1), default 0.1): held-out fraction'
    """
    if options is None:
        return "not declared (passed to the plugin unchecked)"
    parts = []
    for name, info in options.model_fields.items():
        text = f"{name} ({_type_text(info)}, default {_default_text(info)}"
        text += ", Python only)" if name in options.python_only else ")"
        if details and info.description:
            text += f": {info.description}"
        parts.append(text)
    if not parts:
        return "none"
    return ("\n".join(parts)) if details else ", ".join(parts)


def option_rows(options: type[PluginOptions] | None) -> list[dict[str, Any]] | None:
    """One ``{name, type, default, python_only, description}`` per declared option (None: not declared).

    What ``symdsl plugins --json`` prints; defaults as text where they are not plain JSON values.

    >>> from pydantic import Field
    >>> class Demo(PluginOptions):
    ...     steps: int = Field(1000, ge=1, description="training steps")
    >>> option_rows(Demo)
    [{'name': 'steps', 'type': 'int >= 1', 'default': 1000, 'python_only': False, 'description': 'training steps'}]
    """
    if options is None:
        return None
    rows = []
    for name, info in options.model_fields.items():
        default = info.get_default(call_default_factory=True)
        rows.append({"name": name, "type": _type_text(info),
                     "default": default if isinstance(default, (int, float, str, bool, type(None))) else str(default),
                     "python_only": name in options.python_only, "description": info.description or ""})
    return rows


def _flat(annotation: Any) -> list[Any]:
    """The alternatives of a (possibly optional or union) annotation."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return [a for arg in typing.get_args(annotation) for a in _flat(arg)]
    if origin is typing.Annotated:
        return _flat(typing.get_args(annotation)[0])
    return [annotation]


TYPE_NAMES = {int: "int", float: "float", bool: "bool", str: "text", dict: "mapping", list: "list",
              tuple: "list", type(None): "none", Any: "any"}


def _name(annotation: Any) -> str:
    if typing.get_origin(annotation) is Literal:
        return " or ".join(repr(v) for v in typing.get_args(annotation))
    origin = typing.get_origin(annotation) or annotation
    name = TYPE_NAMES.get(origin, getattr(origin, "__name__", str(origin)))
    if origin in (list, tuple) and typing.get_args(annotation):     # tuple[str, ...] -> "list of text"
        name += f" of {_name(typing.get_args(annotation)[0])}"
    return name


def _bounds(info: FieldInfo) -> str:
    """``>= 1``, ``> 0`` or ``in (0, 1)`` from the field's Ge/Gt/Le/Lt metadata ('' if none)."""
    low = high = None
    for item in info.metadata:
        if isinstance(item, (annotated_types.Ge, annotated_types.Gt)):
            low = ("[" if isinstance(item, annotated_types.Ge) else "(", getattr(item, item.__slots__[0]))
        if isinstance(item, (annotated_types.Le, annotated_types.Lt)):
            high = ("]" if isinstance(item, annotated_types.Le) else ")", getattr(item, item.__slots__[0]))
    if low and high:
        return f" in {low[0]}{low[1]}, {high[1]}{high[0]}"
    if low:
        return f" {'>=' if low[0] == '[' else '>'} {low[1]}"
    if high:
        return f" {'<=' if high[0] == ']' else '<'} {high[1]}"
    return ""


def _type_text(info: FieldInfo) -> str:
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    if "shown_as" in extra:
        return str(extra["shown_as"])
    names = list(dict.fromkeys(_name(a) for a in _flat(info.annotation)))
    text = " or ".join(n for n in names if n != "none") + _bounds(info)
    return text + (" or none" if "none" in names else "")


def _default_text(info: FieldInfo) -> str:
    default = info.get_default(call_default_factory=True)
    if isinstance(default, tuple):
        return repr(list(default))
    return "none" if default is None else repr(default) if isinstance(default, str) else str(default)


# pydantic error type -> what to say about the value
PHRASES = {"int_parsing": "is not an integer", "int_type": "is not an integer",
           "int_from_float": "is not an integer", "float_parsing": "is not a number", "float_type": "is not a number",
           "finite_number": "is not finite (NaN and infinity are refused)", "bool_parsing": "is not true or false",
           "bool_type": "is not true or false", "string_type": "is not text", "dict_type": "is not a mapping",
           "list_type": "is not a list", "tuple_type": "is not a list"}
BOUNDS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}


def _problem(options: type[PluginOptions], error: Mapping[str, Any]) -> str:
    """One pydantic error as 'option NAME=VALUE <what is wrong>'."""
    location = [str(part) for part in error["loc"]]
    name = location[0] if location else "?"
    if error["type"] == "extra_forbidden":
        return f"no option {name!r}{suggest(name, options.model_fields)}"
    value = error.get("input")
    where = ".".join(location)
    ctx = error.get("ctx") or {}
    if error["type"] in PHRASES:
        what = PHRASES[error["type"]]
    elif error["type"] in BOUNDS:
        bound = next(iter(ctx.values()), "?")
        what = f"must be {BOUNDS[error['type']]} {bound}"
    elif error["type"] == "literal_error":
        what = f"must be {ctx.get('expected', 'one of the listed values')}"
    elif error["type"] == "value_error":
        what = str(ctx.get("error", error["msg"]))
    else:
        what = error["msg"][0].lower() + error["msg"][1:]
    return f"option {where}={value!r} {what}"


__all__ = ["Device", "OptionsError", "PluginOptions", "check_options", "declared", "describe_options", "option_rows", "shown_as"]
