"""The spec reader parses with libyaml where PyYAML has it; what it reads must equal the pure-Python
parser's, key positions and error messages included."""
from pathlib import Path

import pytest
import yaml

from symdsl.errors import SpecError
from symdsl.spec import limits, source

SPECS = sorted((Path(__file__).resolve().parents[1] / "specs").glob("*.yaml"))


def _pure_python(monkeypatch):
    monkeypatch.setattr(source, "FAST_LOADER", yaml.SafeLoader)
    monkeypatch.setattr(limits.scan_yaml, "__defaults__", (yaml.SafeLoader,))


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_every_shipped_spec_reads_the_same_with_either_parser(path, monkeypatch):
    text = path.read_text()
    fast = source.parse_spec_text(text, path.name)
    _pure_python(monkeypatch)
    slow = source.parse_spec_text(text, path.name)
    assert fast.data == slow.data
    assert fast.positions == slow.positions and len(fast.positions) > 10


@pytest.mark.parametrize("text", [
    "symdsl: 1\nname: x\nsites: {a: [1, 2}\n",                  # unclosed flow sequence
    "symdsl: 1\nname: x\n  bad: indent\n",                       # indentation
    "symdsl: 1\nname: x\nsites: [a.${i}.b, c]\n",               # template in a flow collection
    "symdsl: 1\nname: x\nrepeat: {i: " + "9" * 40 + "}\n",       # integer past the limit
    "symdsl: 1\nname: x\nsites: " + "[" * 1500 + "]" * 1500 + "\n",   # past libyaml's own nesting limit
])
def test_errors_read_the_same_with_either_parser(text, monkeypatch):
    with pytest.raises(SpecError) as fast:
        source.parse_spec_text(text, "s.yaml")
    _pure_python(monkeypatch)
    with pytest.raises(SpecError) as slow:
        source.parse_spec_text(text, "s.yaml")
    assert str(fast.value) == str(slow.value)
    assert "s.yaml:" in str(fast.value)


def test_the_fast_parser_is_libyaml_where_pyyaml_has_it():
    assert limits.FAST_LOADER is (yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader)
