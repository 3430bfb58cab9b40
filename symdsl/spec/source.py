"""Read a YAML spec keeping the file position of every key, for error messages."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import Problem, SpecError
from .limits import FAST_LOADER, check_size, decode, scan_yaml

Path_ = tuple  # a key path inside the document, e.g. ("sites", "resid", "group")


@dataclass
class SpecSource:
    """The parsed YAML document plus where each key path sits in the file."""

    data: Any
    file: str
    positions: dict[tuple, tuple[int, int]] = field(default_factory=dict)

    def where(self, path: tuple) -> tuple[int | None, int | None]:
        """(line, column) of the deepest known prefix of ``path``, 1-based."""
        path = tuple(path)
        while path:
            if path in self.positions:
                return self.positions[path]
            # a key YAML reads as a number (``1: ...``) is recorded by its text
            text = tuple(p if isinstance(p, str) or self._is_list(path[:i]) else str(p) for i, p in enumerate(path))
            if text in self.positions:
                return self.positions[text]
            path = path[:-1]
        return self.positions.get((), (None, None))

    def _is_list(self, path: tuple) -> bool:
        node = self.data
        for part in path:
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                return False
        return isinstance(node, list)

    def problem(self, path: tuple, message: str, hint: str = "") -> Problem:
        line, col = self.where(path)
        return Problem(message=message, path=tuple(path), file=self.file, line=line, column=col, hint=hint)


def _walk(node: yaml.Node, path: tuple, positions: dict, problems: list, file: str) -> None:
    positions.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
    if isinstance(node, yaml.MappingNode):
        seen: set = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                problems.append(Problem(f"duplicate key '{key}'", path + (key,), file,
                                        key_node.start_mark.line + 1, key_node.start_mark.column + 1,
                                        hint="each key may appear once in a mapping; merge the two entries"))
            seen.add(key)
            positions[path + (key,)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            _walk(value_node, path + (key,), positions, problems, file)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, path + (index,), positions, problems, file)


def _template_token(line: str, column: int) -> str:
    """The unquoted scalar holding the ``${`` nearest ``column`` (1-based) in ``line``, e.g. ``h.${i}.ln_1``."""
    starts = [i for i in range(len(line)) if line.startswith("${", i)]
    at = min(starts, key=lambda i: abs(i - (column - 1)))
    left = at
    while left > 0 and line[left - 1] not in " \t[{,:'\"":
        left -= 1
    right = line.index("}", at) + 1 if "}" in line[at:] else len(line)
    while right < len(line) and line[right] not in " \t]},:'\"":
        if line.startswith("${", right):
            right = line.index("}", right) + 1 if "}" in line[right:] else len(line)
        else:
            right += 1
    return line[left:right]


def _compose_and_construct(text: str, loader_class) -> tuple[yaml.Node | None, Any]:
    """The document's node tree (for key positions) and the Python data built from that same tree:
    one parse where composing and loading separately would take two."""
    loader = loader_class(text)
    try:
        node = loader.get_single_node()
        return node, (loader.construct_document(node) if node is not None else None)
    finally:
        loader.dispose()


def parse_spec_text(text: str, file: str = "<spec>") -> SpecSource:
    """Parse YAML text into a :class:`SpecSource`.

    >>> src = parse_spec_text("a:\\n  b: 1\\n", "x.yaml")
    >>> src.data, src.where(("a", "b"))
    ({'a': {'b': 1}}, (2, 3))
    """
    scan_yaml(text, file)      # size, depth, aliases, integers: refused before anything is built
    try:
        try:
            node, data = _compose_and_construct(text, FAST_LOADER)
        except yaml.YAMLError:
            # libyaml and the pure-Python parser word errors differently: the message (and its
            # position) always comes from the pure-Python one, so it reads the same on every install
            node, data = _compose_and_construct(text, yaml.SafeLoader)
    except (RecursionError, MemoryError, ValueError) as exc:   # past the scan's bounds: should not happen
        raise SpecError([Problem(f"spec too large or too deeply nested to read ({type(exc).__name__})", (), file,
                                 hint="a spec is a small YAML file; is this the right file?")]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        col = mark.column + 1 if mark else None
        reason = getattr(exc, "problem", None) or str(exc)
        hint = "check indentation and quoting around this position"
        lines = text.splitlines()
        if line is not None and lines and "${" in lines[min(line, len(lines)) - 1]:
            hint = ('a ${...} template inside a {...} or [...] flow collection must be quoted: '
                    f'"{_template_token(lines[min(line, len(lines)) - 1], col or 1)}"')
        raise SpecError([Problem(f"not valid YAML: {reason}", (), file, line, col, hint=hint)]) from None
    positions: dict = {}
    problems: list = []
    if node is not None:
        _walk(node, (), positions, problems, file)
    if problems:
        raise SpecError(problems)
    return SpecSource(data=data, file=file, positions=positions)


def read_spec_file(path: str | Path) -> SpecSource:
    """Read a spec file from disk (see :func:`parse_spec_text`)."""
    path = Path(path)
    try:
        if path.is_file():
            check_size(path.stat().st_size, str(path))   # before reading a huge file into memory
        data = path.read_bytes()
    except OSError as exc:
        raise SpecError([Problem(f"cannot read spec file: {exc.strerror}", (), str(path),
                                 hint="pass the path of a .yaml spec, or a spec name from `symdsl specs`")]) from None
    return parse_spec_text(decode(data, str(path)), str(path))
