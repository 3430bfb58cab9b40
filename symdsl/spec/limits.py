"""Bounds on what a spec file may cost to read: size, nesting, aliases, integers, ranges, expressions.

A spec is data, and a few hundred bytes of YAML can ask for billions of nodes through aliases
("billion laughs"), nest deeper than the parser's recursion, or hold integers Python refuses
to convert. :func:`scan_yaml` reads the token stream once, before anything is built, keeping
count of the expanded size (an alias costs what its anchor holds), and stops at the first
limit crossed with the file:line:col where it happened. The other limits apply where the
values are used: :data:`MAX_REPEAT` in :mod:`.config`, :data:`MAX_EXPR_CHARS` and
:data:`MAX_EXPR_BITS` in :mod:`.expr`.
"""
from __future__ import annotations

import re

import yaml

from ..errors import Problem, SpecError

MAX_SPEC_BYTES = 1 << 20          # 1 MiB; the shipped specs are under 6 KB
MAX_DEPTH = 64                    # nested mappings/lists; the shipped specs use 5
MAX_ALIASES = 256                 # alias uses (*name) in one file; the shipped specs use none
MAX_NODES = 200_000               # nodes after expanding every alias
MAX_INT_DIGITS = 19               # digits of a YAML integer (2**63 has 19)
MAX_REPEAT = 4096                 # one 'repeat' range (layers, experts, heads ...)
MAX_REPEAT_PRODUCT = 1_000_000    # all 'repeat' ranges multiplied: what a template over all of them expands to
MAX_EXPR_CHARS = 1000             # one dimension expression
MAX_EXPR_BITS = 64                # magnitude of every value an expression computes

# libyaml's parser, where PyYAML was built with it (about 20x faster on the shipped specs: listing
# them all takes 0.03 s instead of 0.6 s); the pure-Python one otherwise. Same events, same nodes.
FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_INT = re.compile(r"^[-+]?(0b[0-1_]+|0o?[0-7_]+|[0-9][0-9_]*|0x[0-9a-fA-F_]+|[1-9][0-9_]*(:[0-5]?[0-9])+)$")


def _problem(file: str, mark, message: str, hint: str) -> SpecError:
    line, col = (mark.line + 1, mark.column + 1) if mark is not None else (None, None)
    return SpecError([Problem(message, (), file, line, col, hint=hint)])


def check_size(size: int, file: str) -> None:
    """Refuse a spec larger than :data:`MAX_SPEC_BYTES` before reading it.

    >>> check_size(10, "a.yaml")
    >>> check_size(MAX_SPEC_BYTES + 1, "a.yaml")
    Traceback (most recent call last):
    ...
    symdsl.errors.SpecError: 1 problem in spec:
      a.yaml: spec file is 1048577 bytes, more than the 1048576 a spec may have
        hint: a spec declares sites and patterns; is this the right file?
    """
    if size > MAX_SPEC_BYTES:
        raise SpecError([Problem(f"spec file is {size} bytes, more than the {MAX_SPEC_BYTES} a spec may have", (), file,
                                 hint="a spec declares sites and patterns; is this the right file?")])


def decode(data: bytes, file: str) -> str:
    """UTF-8 text of a spec file; a decode error names the line and column of the first bad byte.

    >>> decode(b"a: 1\\nb: \\xff\\n", "x.yaml")
    Traceback (most recent call last):
    ...
    symdsl.errors.SpecError: 1 problem in spec:
      x.yaml:2:4: not UTF-8 text: byte 0xff cannot be decoded
        hint: save the spec as UTF-8
    """
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[:exc.start]
        line = before.count(b"\n") + 1
        column = exc.start - (before.rfind(b"\n") + 1) + 1
        raise SpecError([Problem(f"not UTF-8 text: byte 0x{data[exc.start]:02x} cannot be decoded", (), file, line,
                                 column, hint="save the spec as UTF-8")]) from None


def scan_yaml(text: str, file: str, loader=FAST_LOADER) -> None:
    """Walk the YAML event stream once and refuse, located, what would be too costly to build.

    Checks nesting depth, alias uses, recursive aliases, the expanded node count and integer
    sizes; YAML syntax errors are left to the caller's parser (the scan stops where they start).

    >>> scan_yaml("a: &x [1, 2]\\nb: *x\\n", "ok.yaml")
    >>> scan_yaml("a: &x [1, *x]\\n", "loop.yaml")
    Traceback (most recent call last):
    ...
    symdsl.errors.SpecError: 1 problem in spec:
      loop.yaml:1:11: alias '*x' refers to the node it is inside (a recursive structure)
        hint: a spec is a tree: write the values out instead of referring back
    """
    check_size(len(text.encode("utf-8", "surrogatepass")), file)
    resolver = yaml.resolver.Resolver()
    sizes: dict[str, int] = {}         # anchor -> expanded node count of what it names
    open_: list[list] = []             # per open collection: [anchor, node count so far]
    aliases = total = 0
    try:
        for event in yaml.parse(text, Loader=loader):
            count = 0
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                if len(open_) >= MAX_DEPTH:
                    raise _problem(file, event.start_mark, f"nested more than {MAX_DEPTH} levels deep",
                                   "a spec needs a handful of levels; flatten this structure")
                open_.append([event.anchor, 1])
                total += 1
                continue
            if isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                anchor, count = open_.pop()     # counted in total as its children came
                if anchor is not None:
                    sizes[anchor] = count
                if open_:
                    open_[-1][1] += count
                continue
            if isinstance(event, yaml.ScalarEvent):
                count = 1
                if event.anchor is not None:
                    sizes[event.anchor] = 1
                # a plain scalar: style None (pure-Python parser) or "" (libyaml)
                if event.implicit[0] and not event.style and _INT.match(event.value) and \
                        resolver.resolve(yaml.ScalarNode, event.value, (True, False)) == "tag:yaml.org,2002:int":
                    digits = len(event.value.lstrip("+-").replace("_", ""))
                    if digits > MAX_INT_DIGITS:
                        raise _problem(file, event.start_mark, f"integer of {digits} digits: more than the "
                                       f"{MAX_INT_DIGITS} a spec may use", "sizes and ranges are small integers")
            elif isinstance(event, yaml.AliasEvent):
                aliases += 1
                if aliases > MAX_ALIASES:
                    raise _problem(file, event.start_mark, f"more than {MAX_ALIASES} aliases",
                                   "write the values out; specs need few or no aliases")
                if event.anchor not in sizes:
                    if any(anchor == event.anchor for anchor, _ in open_):
                        raise _problem(file, event.start_mark, f"alias '*{event.anchor}' refers to the node it is "
                                       "inside (a recursive structure)", "a spec is a tree: write the values out "
                                       "instead of referring back")
                    continue          # an undefined alias: the parser reports it next
                count = sizes[event.anchor]
            else:
                continue
            total += count
            if total > MAX_NODES:
                raise _problem(file, event.start_mark, f"the document expands to more than {MAX_NODES} nodes "
                               "(aliases repeat what their anchors hold)", "write the values out; a spec is small")
            if open_:
                open_[-1][1] += count
    except yaml.YAMLError:
        # libyaml stops at its own limits (1000 levels of nesting) with an error of its own: the
        # pure-Python parser goes on to the limit this scan states, or to the true syntax error
        if loader is not yaml.SafeLoader:
            scan_yaml(text, file, yaml.SafeLoader)
        return                        # a syntax error: parse_spec_text reports it with its position
