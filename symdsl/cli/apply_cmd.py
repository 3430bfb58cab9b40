"""``symdsl apply TRANSFORM MODEL -o OUT``: move another checkpoint by a saved alignment transform."""
from __future__ import annotations

from ..api.apply import apply
from ..models import load_model
from ..models.output import check_output
from ..models.save import check_savable
from .align_cmd import _command_line, _dtype
from .logs import get_logger

log = get_logger()


def add_parser(sub) -> None:
    p = sub.add_parser("apply", help="move a model by the transform an align run saved (e.g. a fine-tuned "
                                     "descendant of B into A's frame)")
    p.add_argument("transform", metavar="TRANSFORM",
                   help="an align output folder, or its transform.safetensors")
    p.add_argument("model", metavar="MODEL",
                   help="a model with B's architecture and configuration (save_pretrained or symdsl folder, "
                        "Hub id, timm:NAME@FILE, module:factory)")
    p.add_argument("--spec", default=None,
                   help="spec name or YAML path (default: the one named in the transform's metadata)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="folder to write the moved model into")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists and is not empty")
    p.add_argument("--trust-code", action="store_true",
                   help="let model folders name classes outside timm, transformers, torch.nn and registered loaders "
                        "(see docs/security.md)")
    _dtype(p)
    p.set_defaults(run=run_apply)


def run_apply(args) -> int:
    check_output(args.output, inputs=[args.transform, args.model], overwrite=args.overwrite, flag="--overwrite")
    model = load_model(args.model, loaders=args.registries.model_loaders.values(), trust_code=args.trust_code)
    check_savable(model)
    moved = apply(args.transform, model, args.spec, registries=args.registries)
    out = moved.save(args.output, {"command": "apply", "transform": args.transform, "model": args.model,
                                   "command_line": _command_line(args)}, overwrite=args.overwrite, dtype=args.dtype)
    for note in moved.notes:
        log.info("note: %s", note)
    same = moved.info.get("same_b")
    which = {True: "the B it was found for", False: "a model other than the B it was found for",
             None: "a model (the transform records no digest of B)"}[same]
    print(f"applied {args.transform} (spec {moved.spec.name}) to {which}: {args.model}")
    print(f"wrote {out}/ (standard checkpoint, transform.safetensors, README.md, symdsl.json)")
    return 0
