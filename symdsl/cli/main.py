"""``symdsl`` command-line entry point: subcommands, exit codes, error printing.

Exit codes: 0 success, 1 a check failed (symmetry violated or spec invalid), 2 usage error.
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
from . import infer_cmd


def _version_line() -> str:
    """``symdsl X (torch Y, python Z)``: what a bug report needs first."""
    return f"symdsl {__version__} (torch {torch.__version__}, python {platform.python_version()})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="symdsl", description="Align and merge Transformers modulo their "
                                     "parameter-space symmetries, declared as checked YAML specs.")
    parser.add_argument("--version", action="version", version=_version_line())
    parser.add_argument("--block", action="append", default=[], metavar="PLUGIN",
                        help="do not load this plugin (repeatable; also SYMDSL_BLOCK_PLUGINS=a,b)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    specs_cmd.add_parsers(sub)
    check_cmd.add_parser(sub)
    infer_cmd.add_parser(sub)
    plugins_cmd.add_parser(sub)
    train_cmd.add_parser(sub)
    demo_cmd.add_parser(sub)
    align_cmd.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)     # the command line, for outputs' records
    if not args.command:
        parser.print_help()
        return 2
    try:
        args.registries = load(blocked=args.block)   # built once here and passed down
        return int(args.run(args) or 0)
    except SpecError as exc:
        print(f"symdsl {args.command}: {exc}", file=sys.stderr)
        return 1
    except UsageError as exc:
        print(f"symdsl {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except SymdslError as exc:
        print(f"symdsl {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"symdsl {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug in symdsl or a plugin: say so plainly, keep the traceback on request
        if os.environ.get("SYMDSL_DEBUG"):
            raise
        print(f"symdsl {args.command}: internal error: {type(exc).__name__}: {exc}\n"
              "    this is a bug in symdsl or one of its plugins; rerun with SYMDSL_DEBUG=1 for the traceback "
              "and report it", file=sys.stderr)
        return 1


def print_json(data) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
