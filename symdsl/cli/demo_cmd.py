"""``symdsl demo [vit|gpt2]``: the whole pipeline on bundled real data."""
from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="train two small models, align them every way, print the barrier table")
    p.add_argument("kind", nargs="?", default="vit", choices=["vit", "gpt2"],
                   help="vit: ViT on sklearn digits (default); gpt2: GPT-2 on a text corpus")
    p.add_argument("--text", metavar="FILE", help="gpt2: train on this text file (default: the Python standard "
                   "library's source, present on every machine)")
    p.add_argument("--steps", type=int, help="training steps per model (default: the recipe's)")
    p.add_argument("--learn-steps", type=int, help="steps of learned matching (default: the matcher's, 1000)")
    p.add_argument("-o", "--output", default="symdsl-demo", help="folder for curves.png and demo.json")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..experiments.demo import run_demo
    from ..errors import UsageError

    if args.text and args.kind != "gpt2":
        raise UsageError("--text applies to `symdsl demo gpt2`")
    run_demo(args.kind, output=args.output, data=f"text:{args.text}" if args.text else None, steps=args.steps,
             learn_steps=args.learn_steps, say=lambda line: print(line, flush=True))
    return 0
