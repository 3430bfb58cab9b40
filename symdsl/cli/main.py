"""``symdsl`` command-line entry point: subcommands, exit codes, error printing, verbosity.

Exit codes: 0 success, 1 a check failed (symmetry violated or spec invalid), 2 usage error,
130 interrupted, 141 stdout closed early (``symdsl specs | head``; the shell's code for SIGPIPE).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import torch

from .._version import __version__
from ..errors import SpecError, SymdslError, UsageError
from ..plugins import load
from . import align_cmd, check_cmd, demo_cmd, plugins_cmd, specs_cmd, train_cmd
from . import apply_cmd, infer_cmd, run_cmd
from .logs import configure, get_logger

BROKEN_PIPE = 141   # 128 + SIGPIPE, what a C program killed by the closed pipe would report


def _version_line() -> str:
    """``symdsl X (torch Y, python Z)``: what a bug report needs first."""
    return f"symdsl {__version__} (torch {torch.__version__}, python {platform.python_version()})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="symdsl", description="Align and merge Transformers modulo their "
                                     "parameter-space symmetries, declared as checked YAML specs.")
    parser.add_argument("--version", action="version", version=_version_line())
    parser.add_argument("--block", action="append", default=[], metavar="PLUGIN",
                        help="do not load this plugin (repeatable; also SYMDSL_BLOCK_PLUGINS=a,b)")
    _add_verbosity(parser, "normal")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND",
                                help="what to do; `symdsl COMMAND -h` lists its options")
    specs_cmd.add_parsers(sub)
    check_cmd.add_parser(sub)
    infer_cmd.add_parser(sub)
    plugins_cmd.add_parser(sub)
    train_cmd.add_parser(sub)
    demo_cmd.add_parser(sub)
    align_cmd.add_parsers(sub)
    apply_cmd.add_parser(sub)
    run_cmd.add_parser(sub)
    for command in sub.choices.values():   # -q / -v also after the command; the default stays the top level's
        _add_verbosity(command, argparse.SUPPRESS)
    return parser


def _add_verbosity(parser: argparse.ArgumentParser, default) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", dest="verbosity", action="store_const", const="quiet", default=default,
                       help="show only warnings and errors on stderr (no progress, no notes)")
    group.add_argument("-v", "--verbose", dest="verbosity", action="store_const", const="verbose", default=default,
                       help="also show debug messages on stderr (SYMDSL_DEBUG=1 adds tracebacks of internal errors)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)     # the command line, for outputs' records
    args.parser, args.subparsers = parser, _subcommands(parser)   # symdsl run parses its runs with them
    if not args.command:
        parser.print_help()
        return 2
    log = configure(args.verbosity)
    log.debug("%s: %s", _version_line(), " ".join(sys.argv[1:] if argv is None else argv))
    try:
        args.registries = load(blocked=args.block)   # built once here and passed down
        code = int(args.run(args) or 0)
        sys.stdout.flush()   # a closed pipe shows here, inside the handlers, not at interpreter exit
        return code
    except BrokenPipeError:
        _silence_stdout()
        return BROKEN_PIPE
    except SpecError as exc:
        log.error("symdsl %s: %s", args.command, exc)
        return 1
    except UsageError as exc:
        log.error("symdsl %s: error: %s", args.command, exc)
        return 2
    except SymdslError as exc:
        log.error("symdsl %s: %s", args.command, exc)
        return 1
    except KeyboardInterrupt:
        log.error("symdsl %s: interrupted", args.command)
        return 130
    except Exception as exc:  # a bug in symdsl or a plugin: say so plainly, keep the traceback on request
        if os.environ.get("SYMDSL_DEBUG"):
            raise
        log.error("symdsl %s: internal error: %s: %s\n"
                  "    this is a bug in symdsl or one of its plugins; rerun with SYMDSL_DEBUG=1 for the traceback "
                  "and report it", args.command, type(exc).__name__, exc)
        return 1


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Each subcommand's own parser, by name."""
    found = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(found[0].choices) if found else {}


def _silence_stdout() -> None:
    """Point stdout at /dev/null: the reader has gone, and the interpreter's last flush of what is
    still buffered would otherwise fail again ("Exception ignored ... BrokenPipeError")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):   # a stdout without a file descriptor (an in-memory capture)
        pass


def print_json(data) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
