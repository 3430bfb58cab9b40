"""``symdsl run RECIPE``: run the align, merge, barrier and apply runs a recipe file describes
(:mod:`symdsl.cli.recipe`), or re-run the one an output's ``symdsl.json`` records."""
from __future__ import annotations

from ..errors import UsageError
from .logs import get_logger
from .recipe import COMMANDS, read_recipe, with_output

log = get_logger()


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="run the align/merge/barrier/apply runs of a recipe file, or re-run an "
                                   "output's symdsl.json")
    p.add_argument("recipe", metavar="RECIPE",
                   help="a recipe YAML file (recipe: 1, runs: [...]; see docs/recipes.md) or an output's symdsl.json")
    p.add_argument("-o", "--output", default=None, metavar="OUT",
                   help="write the run's output here instead (only for a recipe of one run, e.g. a symdsl.json)")
    p.add_argument("--overwrite", action="store_true", help="let every run replace an existing non-empty output")
    p.set_defaults(run=run_recipe)


def run_recipe(args) -> int:
    commands = {name: parser for name, parser in args.subparsers.items() if name in COMMANDS}
    runs = read_recipe(args.recipe, commands)
    if args.output is not None and len(runs) != 1:
        raise UsageError(f"-o names the output of a recipe of one run; {args.recipe} has {len(runs)} runs "
                         "(set 'output' in each run instead)")
    for number, run in enumerate(runs, start=1):
        run = with_output(run, args.output, args.overwrite)
        log.info("run %d/%d (%s): symdsl %s", number, len(runs), run.where, " ".join(run.argv))
        settings = args.parser.parse_args(run.argv)
        settings.argv, settings.registries = run.argv, args.registries
        code = int(settings.run(settings) or 0)
        if code:
            log.error("run %d/%d (%s) failed with exit status %d; the runs after it were not started",
                      number, len(runs), run.where, code)
            return code
    return 0
