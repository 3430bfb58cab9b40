"""Override the shapes of a spec's example inputs (``symdsl check --inputs x=1x3x32x32``).

A spec's ``example.inputs`` say what each ``forward()`` argument is (integer tokens in a range,
or Gaussian floats) and give its shape as dimension expressions over the model's config and
dims, so they follow the model. An override replaces only the shape of inputs the spec
declares: the kind and value range stay the spec's, so an override cannot turn token ids into
floats or drop the vocabulary bound.
"""
from __future__ import annotations

import re
from typing import Mapping, Sequence

from ..errors import UsageError, suggest
from .load import Spec

# NAME=1x3x32x32: a forward() keyword and positive integer sizes joined by 'x'
_ITEM = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(\d+(?:\s*x\s*\d+)*)\s*$")
SYNTAX = "NAME=SHAPE, e.g. pixel_values=1x3x32x32 or input_ids=1x16 (several: repeat the option or separate by commas)"


def parse_input_shapes(texts: Sequence[str]) -> dict[str, list[int]]:
    """``["x=1x3x32x32", "ids=1x16,mask=1x16"]`` as ``{"x": [1, 3, 32, 32], ...}``; a clear error otherwise.

    >>> parse_input_shapes(["input_ids=1x16,token_type_ids=1x16"])
    {'input_ids': [1, 16], 'token_type_ids': [1, 16]}
    >>> parse_input_shapes(["x=1 by 3"])
    Traceback (most recent call last):
    ...
    symdsl.errors.UsageError: --inputs 'x=1 by 3': expected NAME=SHAPE, e.g. pixel_values=1x3x32x32 or input_ids=1x16 (several: repeat the option or separate by commas)
    """
    shapes: dict[str, list[int]] = {}
    for text in texts:
        for item in text.split(","):
            match = _ITEM.match(item)
            if match is None:
                raise UsageError(f"--inputs '{item.strip()}': expected {SYNTAX}")
            name, shape = match.group(1), [int(s) for s in match.group(2).split("x")]
            if name in shapes:
                raise UsageError(f"--inputs: '{name}' is given twice")
            if 0 in shape:
                raise UsageError(f"--inputs '{item.strip()}': a size is 0; every size must be at least 1")
            shapes[name] = shape
    return shapes


def with_input_shapes(spec: Spec, shapes: Mapping[str, Sequence[int]]) -> Spec:
    """A copy of ``spec`` whose example inputs have the given shapes (the kinds and ranges unchanged).

    Each name must be an input the spec declares, with the same number of axes.

    >>> from symdsl.spec import load_spec_text
    >>> spec = load_spec_text("symdsl: 1\\nname: s\\nexample:\\n  factory: m:f\\n"
    ...                       "  inputs: {x: {randn: true, shape: [2, C, H, W]}}\\n")
    >>> with_input_shapes(spec, {"x": [1, 3, 32, 32]}).document.example.inputs["x"].shape
    [1, 3, 32, 32]
    """
    if not shapes:
        return spec
    example = spec.document.example
    declared = dict(example.inputs) if example is not None else {}
    if not declared:
        raise UsageError(f"spec '{spec.name}' ({spec.file}) declares no example.inputs; --inputs only sets the shapes "
                         "of declared inputs (add them to the spec's 'example' section: docs/spec-language.md)")
    assert example is not None
    inputs = dict(declared)
    for name, shape in shapes.items():
        if name not in declared:
            line, _ = spec.source.where(("example", "inputs"))
            raise UsageError(f"--inputs '{name}': spec '{spec.name}' has no example input '{name}'"
                             f"{suggest(name, declared)}; its inputs: {', '.join(declared)} "
                             f"({spec.file}:{line}: example.inputs)")
        item = declared[name]
        if len(shape) != len(item.shape):
            line, col = spec.source.where(("example", "inputs", name))
            raise UsageError(f"--inputs '{name}': {len(shape)} sizes given, but {spec.file}:{line}:{col}: "
                             f"example.inputs.{name} has {len(item.shape)} axes (shape {list(item.shape)})")
        inputs[name] = item.model_copy(update={"shape": [int(s) for s in shape]})
    document = spec.document.model_copy(update={"example": example.model_copy(update={"inputs": inputs})})
    return Spec(document, spec.source, trusted=spec.trusted)
