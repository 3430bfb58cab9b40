"""Bounded spec loading (issue 16): every costly or malformed spec is refused quickly, located.

Limits live in symdsl.spec.limits: file size, nesting depth, aliases and their expansion,
integer size, 'repeat' ranges and dimension expressions; non-UTF-8 files are reported as such.
"""
from __future__ import annotations

import time
import tracemalloc

import pytest

import symdsl
from symdsl.cli.main import main
from symdsl.errors import SpecError
from symdsl.spec import load_spec, load_spec_text
from symdsl.spec.limits import MAX_SPEC_BYTES

from safety_models import tiny_gpt2

# nine levels of nine aliases, 9**9 = 387 million strings once expanded, padded to the 409 bytes
_LEVELS = "symdsl: 1\nname: lol\nsites: {}\n" + "".join(
    f"{chr(97 + k)}: &{chr(97 + k)} [" + ",".join([f"*{chr(96 + k)}"] * 9 if k else ['"lol"'] * 9) + "]\n"
    for k in range(9)) + "tensors: {}\n"
BOMB = _LEVELS + "description: " + "x" * (409 - len(_LEVELS) - 14) + "\n"


def problem_of(text: str, file: str = "s.yaml") -> str:
    with pytest.raises(SpecError) as info:
        load_spec_text(text, file)
    assert len(info.value.problems) >= 1
    return str(info.value.problems[0])


def test_the_alias_bomb_is_rejected_fast_small_and_located():
    assert len(BOMB.encode()) == 409
    tracemalloc.start()
    start = time.perf_counter()
    message = problem_of(BOMB, "bomb.yaml")
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert seconds < 2 and peak < 200e6
    assert message.startswith("bomb.yaml:") and "expands to more than" in message


def test_the_alias_bomb_on_the_command_line(tmp_path, capsys):
    spec = tmp_path / "bomb.yaml"
    spec.write_text(BOMB)
    start = time.perf_counter()
    assert main(["check", str(spec)]) == 1
    assert time.perf_counter() - start < 2
    assert f"{spec}:" in capsys.readouterr().err


def test_a_recursive_alias_is_located():
    assert "recursive" in problem_of("symdsl: 1\nname: x\nsites: &s {a: *s}\n")


def test_deep_nesting_is_refused_at_the_limit():
    message = problem_of("symdsl: 1\nname: x\nsites: " + "[" * 5000 + "]" * 5000 + "\n")
    assert message.startswith("s.yaml:3:") and "nested more than" in message


def test_too_many_aliases():
    text = "symdsl: 1\nname: x\ndoc: &d 1\nlist: [" + ", ".join(["*d"] * 300) + "]\n"
    assert "aliases" in problem_of(text)


def test_a_huge_integer_is_located():
    message = problem_of("symdsl: 1\nname: x\nrepeat: {i: " + "9" * 5000 + "}\n")
    assert message.startswith("s.yaml:3:") and "integer of 5000 digits" in message


def test_a_file_too_large_is_refused_before_reading(tmp_path):
    spec = tmp_path / "big.yaml"
    spec.write_text("symdsl: 1\nname: big\n" + "# padding\n" * (MAX_SPEC_BYTES // 10))
    with pytest.raises(SpecError, match="bytes, more than"):
        load_spec(spec)


def test_non_utf8_is_reported_as_such(tmp_path, capsys):
    spec = tmp_path / "latin1.yaml"
    spec.write_bytes("symdsl: 1\nname: caf\u00e9\n".encode("latin-1"))
    assert main(["check", str(spec)]) == 1
    err = capsys.readouterr().err
    assert f"{spec}:2:10: not UTF-8 text: byte 0xe9" in err and "internal error" not in err


@pytest.mark.parametrize("value", ["true", "1.0", '"1"'])
def test_the_spec_version_must_be_the_integer_1(value):
    assert "symdsl" in problem_of(f"symdsl: {value}\nname: x\n")


MLP = """symdsl: 1
name: mlp
repeat: {repeat}
dims: {dims}
sites: {{u: {{group: permutation, size: 8}}}}
tensors: {{0.weight: "u _", 0.bias: u, 2.weight: "_ u'"}}
invariant: [2.bias]
"""


def mlp():
    import torch
    return torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def test_a_huge_repeat_range_is_refused_located():
    spec = load_spec_text(MLP.format(repeat="{i: 1000000000000}", dims="{}"), "r.yaml")
    with pytest.raises(SpecError) as info:
        symdsl.check(spec, mlp(), static=False)
    assert "r.yaml:3:" in str(info.value) and "range 1000000000000 is more than" in str(info.value)


def test_squaring_dims_are_bounded_and_fast():
    dims = "{d0: 2, " + ", ".join(f"d{k}: d{k - 1} * d{k - 1}" for k in range(1, 200)) + "}"
    spec = load_spec_text(MLP.format(repeat="{}", dims=dims), "d.yaml")
    start = time.perf_counter()
    with pytest.raises(SpecError) as info:
        symdsl.check(spec, mlp(), static=False)
    assert time.perf_counter() - start < 2
    assert "d.yaml:" in str(info.value) and "more than 64 bits" in str(info.value)


def test_a_very_long_expression_is_refused():
    spec = load_spec_text(MLP.format(repeat="{}", dims='{d: "' + "1 + " * 600 + '1"}'), "e.yaml")
    with pytest.raises(SpecError, match="characters, more than"):
        symdsl.check(spec, mlp(), static=False)


def test_a_gpt2_check_still_works():
    assert symdsl.check("hf-gpt2", tiny_gpt2(), static=False).ok
