"""Recipe files: align, merge, barrier and apply runs written down in YAML, for ``symdsl run``.

A recipe names each run's command and the same arguments the command line takes, by their
long names (``output`` for ``-o``, ``options`` for the ``--option`` pairs, ``verify: false``
for ``--no-verify``)::

    recipe: 1
    runs:
      - align:
          a: runs/vit0
          b: runs/vit1
          matcher: weight
          options: {max_iter: 10}
          output: runs/vit1-aligned
      - barrier: {a: runs/vit0, b: runs/vit1, data: digits, json: runs/barrier.json}

Every key is checked against the command's own parser (so a recipe knows every flag the command
line knows, and nothing else), and a wrong key, type or choice is reported at its line and
column, as spec errors are. The ``symdsl.json`` that every output holds is a recipe too: its
``command_line`` is the run that wrote it.
"""
from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import Problem, SpecError, UsageError
from ..spec.source import SpecSource, read_spec_file

COMMANDS = ("align", "merge", "barrier", "apply")
_SKIPPED = {"help", "verbosity"}          # not run settings
_ALIASES = {"options": "option"}          # the recipe's name -> the parser's dest


@dataclass
class Run:
    """One run of a recipe: its command and the argv the CLI parses for it."""

    command: str
    argv: list[str]
    where: str                            # file:line:col of the run, for messages


def read_recipe(path: str | Path, commands: dict[str, argparse.ArgumentParser]) -> list[Run]:
    """The runs of a recipe file (YAML) or of an output's ``symdsl.json``, validated against the
    ``commands``' parsers; a :class:`~symdsl.errors.SpecError` lists every problem, located."""
    source = read_spec_file(path)
    data = source.data
    if isinstance(data, dict) and "command_line" in data and "runs" not in data:
        return [_recorded_run(source, commands)]
    problems: list[Problem] = []
    if not isinstance(data, dict):
        raise SpecError([source.problem((), "a recipe is a mapping with 'recipe: 1' and 'runs'",
                                        "see docs/recipes.md")])
    version = data.get("recipe")
    if type(version) is not int or version != 1:
        problems.append(source.problem(("recipe",), f"recipe version must be the integer 1, got {version!r}",
                                       "write 'recipe: 1' at the top"))
    unknown = [k for k in data if k not in ("recipe", "runs")]
    problems += [source.problem((k,), f"unknown key '{k}'", "a recipe has only 'recipe' and 'runs'") for k in unknown]
    runs = data.get("runs")
    if not isinstance(runs, list) or not runs:
        problems.append(source.problem(("runs",), "'runs' must be a non-empty list of runs",
                                       "e.g. runs: [{align: {a: A, b: B, output: OUT}}]"))
        raise SpecError(problems)
    out = []
    for index, entry in enumerate(runs):
        run = _run(source, ("runs", index), entry, commands, problems)
        if run is not None:
            out.append(run)
    if problems:
        raise SpecError(problems)
    return out


def _recorded_run(source: SpecSource, commands) -> Run:
    """The run an output's symdsl.json records (its exact command line)."""
    try:
        argv = shlex.split(str(source.data["command_line"]))
    except ValueError as exc:
        raise SpecError([source.problem(("command_line",), f"not a command line: {exc}")]) from None
    if argv[:1] == ["symdsl"]:
        argv = argv[1:]
    argv = [a for a in argv if a not in ("-q", "--quiet", "-v", "--verbose")]
    if not argv or argv[0] not in commands:
        raise SpecError([source.problem(("command_line",), f"records no {' / '.join(COMMANDS)} run: {argv[:1]}",
                                        "only outputs of align, merge, barrier and apply can be re-run")])
    return Run(argv[0], argv, f"{source.file}:command_line")


def _run(source: SpecSource, path: tuple, entry: Any, commands, problems: list[Problem]) -> Run | None:
    if not isinstance(entry, dict) or len(entry) != 1:
        problems.append(source.problem(path, "a run is a mapping with one command as its key",
                                       f"e.g. - align: {{a: A, b: B, output: OUT}} (commands: {', '.join(COMMANDS)})"))
        return None
    (command, settings), = entry.items()
    if command not in commands:
        problems.append(source.problem(path + (command,), f"unknown command '{command}'",
                                       f"commands: {', '.join(COMMANDS)}"))
        return None
    if not isinstance(settings, dict):
        problems.append(source.problem(path + (command,), f"the settings of '{command}' must be a mapping"))
        return None
    actions = {a.dest: a for a in commands[command]._actions if a.dest not in _SKIPPED}
    positional = [a for a in commands[command]._actions if not a.option_strings and a.dest not in _SKIPPED]
    argv, before = [command], len(problems)
    for key, value in settings.items():
        dest = _ALIASES.get(str(key), str(key).replace("-", "_"))
        where = path + (command, key)
        action = actions.get(dest)
        if action is None:
            names = sorted("options" if d == "option" else d for d in actions)
            problems.append(source.problem(where, f"'{command}' has no setting '{key}'", f"settings: {', '.join(names)}"))
            continue
        problem = _check_value(action, value)
        if problem:
            problems.append(source.problem(where, f"{command}.{key}: {problem}", _hint(action)))
            continue
        if action.option_strings:
            argv += _flag_argv(action, value)
    for action in positional:
        value = settings.get(action.dest)
        if value is None:
            problems.append(source.problem(path + (command,), f"'{command}' needs '{action.dest}'", action.help or ""))
        else:
            argv += [str(v) for v in value] if isinstance(value, list) else [str(value)]
    line, column = source.where(path)
    return Run(command, argv, f"{source.file}:{line}:{column}") if len(problems) == before else None


def _check_value(action: argparse.Action, value: Any) -> str | None:
    """Why ``value`` does not suit ``action`` (None: it does)."""
    kind = type(action).__name__
    if kind in ("_StoreTrueAction", "_StoreFalseAction"):
        return None if isinstance(value, bool) else f"expected true or false, got {value!r}"
    if kind == "_AppendAction":
        if not isinstance(value, dict) or not all(isinstance(v, (str, int, float, bool)) for v in value.values()):
            return f"expected a mapping of names to values, got {value!r}"
        return None
    values = value if isinstance(value, list) and action.nargs in ("+", "*") else [value]
    if isinstance(value, list) and action.nargs not in ("+", "*"):
        return f"expected one value, got a list {value!r}"
    for item in values:
        if isinstance(item, (dict, list)) or item is None:
            return f"expected a value, got {item!r}"
        if action.type is not None:
            try:
                action.type(str(item))
            except (TypeError, ValueError, argparse.ArgumentTypeError):
                return f"{item!r} is not a valid {getattr(action.type, '__name__', 'value')}"
        if action.choices is not None and str(item) not in [str(c) for c in action.choices]:
            return f"{item!r} is not one of {', '.join(map(str, action.choices))}"
    return None


def _hint(action: argparse.Action) -> str:
    return (action.help or "").replace("%(default)s", str(action.default))


def _flag_argv(action: argparse.Action, value: Any) -> list[str]:
    flag = max(action.option_strings, key=len)              # the long form
    kind = type(action).__name__
    if kind == "_StoreTrueAction":
        return [flag] if value else []
    if kind == "_StoreFalseAction":
        return [] if value else [flag]
    if kind == "_AppendAction":
        return [part for k, v in value.items() for part in (flag, f"{k}={_text(v)}")]
    if isinstance(value, list):
        return [flag, *[_text(v) for v in value]]
    return [flag, _text(value)]


def _text(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def with_output(run: Run, output: str | None, overwrite: bool) -> Run:
    """``run`` writing to ``output`` instead (``-o`` of ``symdsl run``), with ``--overwrite`` if asked."""
    argv = list(run.argv)
    if output is not None:
        for flag in ("-o", "--output"):
            while flag in argv:
                i = argv.index(flag)
                del argv[i:i + 2]
        argv += ["-o", output]
    if overwrite and "--overwrite" not in argv:
        argv.append("--overwrite")
    return Run(run.command, argv, run.where)


__all__ = ["COMMANDS", "Run", "read_recipe", "with_output"]
