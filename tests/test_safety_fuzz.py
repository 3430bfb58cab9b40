"""Property-based fuzzing of the spec loader (issue 16): mutated specs fail only with SymdslError, quickly.

Each case mutates a shipped spec's text (deleted, duplicated or swapped lines, inserted YAML
punctuation, anchors and aliases, bytes that are not text, truncation, huge numbers), then
loads it and, when it loads, binds it to that spec's tiny example model. Anything but a
``SymdslError`` is an internal error; every case must finish within :data:`CASE_SECONDS`.
"""
from __future__ import annotations

import functools
import time

from hypothesis import HealthCheck, given, settings, strategies as st

from symdsl.errors import SymdslError
from symdsl.models import build_example
from symdsl.spec import load_spec_text, resolve
from symdsl.spec.registry import find_spec

from conftest import REGISTRIES

SPECS = ["hf-gpt2", "timm-vit", "hf-llama"]
CASES = 320
CASE_SECONDS = 5.0          # generous for a loaded 2-core machine; a clean case takes milliseconds

PIECES = ["&a ", "*a", "[", "]", "{", "}", ": ", "- ", "${i}", "${", "'", '"', "\t", "\\", "#", "!!python/object ",
          "9" * 40, "-1", "0", "1e400", "null", "true", ".nan", "~", "<<: *a", "? ", "|", ">", "%", "@", "\x00",
          "\ufeff", "\u202e", "n_embd ** n_embd", "n_embd * n_embd * n_embd", "shape('x', 9)", "attr('__class__')",
          "len('')", "repeat: {i: 100000}", "per: heads.${i}", "group: orthogonal", "preserve: ones", "size: -3"]


@functools.lru_cache(maxsize=None)
def example(name: str):
    spec = find_spec(name, REGISTRIES)
    return spec.source.file, build_example(spec)


def mutate(text: str, draw) -> str:
    lines = text.splitlines(keepends=True)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["delete", "duplicate", "swap", "insert", "replace", "truncate"]))
        if not lines:
            break
        at = draw(st.integers(0, len(lines) - 1))
        if kind == "delete":
            del lines[at]
        elif kind == "duplicate":
            lines.insert(at, lines[at])
        elif kind == "swap":
            other = draw(st.integers(0, len(lines) - 1))
            lines[at], lines[other] = lines[other], lines[at]
        elif kind == "truncate":
            lines = lines[:at + 1]
            lines[-1] = lines[-1][:draw(st.integers(0, len(lines[-1])))]
        else:
            line = lines[at]
            col = draw(st.integers(0, len(line)))
            piece = draw(st.one_of(st.sampled_from(PIECES), st.text(max_size=6)))
            end = col + (draw(st.integers(0, 8)) if kind == "replace" else 0)
            lines[at] = line[:col] + piece + line[end:]
    return "".join(lines)


@st.composite
def mutated_specs(draw):
    name = draw(st.sampled_from(SPECS))
    file, _ = example(name)
    with open(file, encoding="utf-8") as handle:
        return name, mutate(handle.read(), draw)


@settings(max_examples=CASES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated_specs())
def test_mutated_specs_fail_only_with_symdsl_errors(case):
    name, text = case
    _, model = example(name)
    start = time.perf_counter()
    try:
        spec = load_spec_text(text, f"{name}-mutated.yaml")
        resolve(spec, model, registries=REGISTRIES)
    except SymdslError:
        pass
    elapsed = time.perf_counter() - start
    assert elapsed < CASE_SECONDS, f"a case took {elapsed:.1f} s"
