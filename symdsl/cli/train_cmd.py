"""``symdsl train RECIPE``: train a small benchmark model and save it as a standard checkpoint."""
from __future__ import annotations

import time
from pathlib import Path

from ..errors import UsageError
from ..models import save_model
from ..models.output import check_output
from .progress import progress_bar
from .text_data import add_text_options, text_options

RECIPES = ("vit-digits", "gpt2-text", "llama-text", "roberta-mlm")


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a small ViT on digits, a small GPT-2 or Llama (GQA, RoPE) on a text corpus, "
                       "or a small RoBERTa encoder with a masked-LM loss")
    p.add_argument("recipe", choices=RECIPES, help="what to train: " + ", ".join(RECIPES))
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the initial weights and the batch order (default 0)")
    p.add_argument("--data", default=None, help="for gpt2-text and llama-text: stdlib-text (default) or text:PATH; "
                   "for roberta-mlm: mlm:PATH (required)")
    add_text_options(p)
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's)")
    p.add_argument("--width", type=int, default=64, help="residual width (default 64)")
    p.add_argument("--layers", type=int, default=2, help="Transformer blocks (default 2)")
    p.add_argument("--heads", type=int, default=4, help="attention heads per block (default 4)")
    p.add_argument("--kv-heads", type=int, default=2, help="llama-text: key/value heads shared by the query heads")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N to train on (default: the CPU)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="folder to write the model into (new or empty)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists and is not empty")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..data import load_dataset
    from ..experiments.train import (CHAR_GPT2, CHAR_LLAMA, CHAR_ROBERTA, DIGITS_VIT, small_gpt2, small_llama,
                                     small_roberta, small_vit, train)
    from ..experiments.train.recipes import with_steps

    if args.recipe == "roberta-mlm" and not (args.data or "").startswith("mlm:"):
        raise UsageError(f"roberta-mlm trains with a masked-LM loss: give --data mlm:PATH (a text file), not "
                         f"{args.data or 'no --data'}")
    text = [args.data.partition(":")[2]] if (args.data or "").startswith(("text:", "mlm:")) else []
    check_output(args.output, inputs=[*text, *([args.tokenizer] if args.tokenizer else [])],
                 overwrite=args.overwrite, flag="--overwrite")      # before minutes of training

    if args.recipe == "vit-digits":
        if args.tokenizer or args.max_chars is not None:
            raise UsageError("--tokenizer and --max-chars apply to gpt2-text and llama-text")
        if args.data not in (None, "digits"):
            raise UsageError("vit-digits trains on digits only")
        dataset = load_dataset("digits")
        model = small_vit(dataset, embed_dim=args.width, depth=args.layers, num_heads=args.heads, seed=args.seed)
        recipe = DIGITS_VIT
    else:
        data = args.data or "stdlib-text"
        dataset = load_dataset(data, **text_options(args, data))
        if args.recipe == "roberta-mlm":
            model = small_roberta(dataset, hidden_size=args.width, num_hidden_layers=args.layers,
                                  num_attention_heads=args.heads, intermediate_size=4 * args.width, seed=args.seed)
            recipe = CHAR_ROBERTA
        elif args.recipe == "llama-text":
            model = small_llama(dataset, hidden_size=args.width, num_hidden_layers=args.layers,
                                num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, seed=args.seed)
            recipe = CHAR_LLAMA
        else:
            model = small_gpt2(dataset, n_embd=args.width, n_layer=args.layers, n_head=args.heads, seed=args.seed)
            recipe = CHAR_GPT2
    options = with_steps(recipe, args.steps)
    start = time.perf_counter()
    with progress_bar(f"train {args.recipe} seed {args.seed}") as bar:
        metrics = train(model, dataset, seed=args.seed, device=args.device, progress=bar.counter("training"), **options)
    seconds = time.perf_counter() - start
    record = {"command": "train", "recipe": args.recipe, "seed": args.seed, "data": dataset.name, "seconds": seconds,
              **{k: v for k, v in metrics.items() if k != "losses"}}
    save_model(model.cpu(), Path(args.output), record, overwrite=args.overwrite)
    print(f"trained {args.recipe} (seed {args.seed}) in {seconds:.1f} s: test loss {metrics.get('test_loss', float('nan')):.4f}, "
          f"accuracy {metrics.get('test_accuracy', float('nan')):.4f}; wrote {args.output}/")
    return 0
