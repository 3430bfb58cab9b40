"""Command-line conventions: help on every argument, errors naming the right flag, -q/-v placement,
quiet broken pipes, and a summary that reports the kept objective in words."""
from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
import torch

from conftest import REGISTRIES
from symdsl.cli.align_cmd import _objective_text
from symdsl.cli.main import BROKEN_PIPE, build_parser
from symdsl.errors import UsageError
from symdsl.match.base import MatchResult
from symdsl.spec.registry import match_spec


def _actions(parser: argparse.ArgumentParser, path: str):
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        yield path, action
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                yield path, choice
            for name, child in action.choices.items():
                yield from _actions(child, f"{path} {name}")


def test_every_argument_of_every_subcommand_has_help():
    seen = list(_actions(build_parser(), "symdsl"))
    missing = [f"{path}: {'/'.join(a.option_strings) or a.dest}" for path, a in seen if not (a.help or "").strip()]
    assert missing == []
    commands = {path for path, _ in seen}
    assert {"symdsl align", "symdsl barrier", "symdsl train", "symdsl check"} <= commands   # the walk went deep


@pytest.mark.parametrize("argv", [["-q", "specs"], ["specs", "-q"], ["specs", "--verbose"], ["specs"]])
def test_verbosity_is_accepted_before_and_after_the_command(argv):
    args = build_parser().parse_args(argv)
    expected = "quiet" if "-q" in argv else "verbose" if "--verbose" in argv else "normal"
    assert args.verbosity == expected


def test_an_unmatched_model_names_the_spec_flag_and_symdsl_infer():
    with pytest.raises(UsageError) as caught:
        match_spec(torch.nn.Linear(3, 3), REGISTRIES)
    text = str(caught.value)
    assert "torch.nn.modules.linear.Linear" in text and "--spec" in text and "spec=" in text
    assert "symdsl infer --model MODEL" in text and "docs/" not in text


def test_the_summary_reports_the_kept_objective_not_the_last_one():
    result = MatchResult({}, "learned", [0.07106, 0.02433, 0.02565],
                         {"kept_objective": 0.02433, "objective_means": "validation loss barrier"})
    assert _objective_text(result) == "objective 0.07106 at the start -> 0.02433 kept (validation loss barrier), "
    plain = MatchResult({}, "plugin", [3.0, 2.0])       # a matcher that says nothing: its last value, a generic word
    assert "-> 2 kept (the matcher's objective, lower is better)" in _objective_text(plain)


def test_a_closed_stdout_ends_quietly():
    # the reader is gone before symdsl writes (it takes a second to start): writing raises BrokenPipeError
    child = subprocess.Popen([sys.executable, "-m", "symdsl.cli.main", "schema"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    child.stdout.close()
    err = child.stderr.read().decode()
    assert child.wait(timeout=120) == BROKEN_PIPE
    assert err == "", err
