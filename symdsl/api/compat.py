"""Are these models the same architecture? Asked before any work, answered with the differing fields.

Two models with equal tensor shapes can still compute differently shaped functions: a 4-head
and a 2-head GPT-2 of one width have identical tensors, but the spec bound with the first
one's head count cuts the second one's heads wrongly. So configurations are compared, not
only shapes, up to the fields listed here that cannot change what the weights mean:

- bookkeeping: :data:`IGNORED_FIELDS` (names, versions, dtypes, label names, generation and
  output switches, initialisation scales, whether embeddings are tied, which canonicalization undoes);
- dropout rates (any field ending in one of :data:`DROPOUT_SUFFIXES`): symdsl evaluates in
  eval mode, where dropout is the identity.

When B is narrower than A and the width lift applies, the width fields may differ too:
:data:`WIDTH_FIELDS` and every configuration name the spec's ``dims`` read.
"""
from __future__ import annotations

import math
import re
from typing import Any, Iterable, Sequence

import torch

from ..data import Dataset
from ..errors import UsageError
from ..models.pages import release_pages
from ..spec.config import model_config
from ..spec.load import Spec

IGNORED_FIELDS = frozenset({
    "_name_or_path", "name_or_path", "transformers_version", "architectures", "torch_dtype", "dtype",
    "_commit_hash", "_attn_implementation", "_attn_implementation_autoset", "attn_implementation",
    "_experts_implementation", "experts_implementation", "id2label", "label2id", "task_specific_params",
    "use_cache", "output_attentions", "output_hidden_states", "return_dict", "torchscript",
    "initializer_range", "init_std", "initializer_factor", "bos_token_id", "eos_token_id", "pad_token_id",
    "sep_token_id", "decoder_start_token_id", "tokenizer_class", "problem_type", "finetuning_task",
    "chunk_size_feed_forward", "is_decoder", "add_cross_attention", "tie_encoder_decoder", "pruned_heads",
    "output_scores", "return_dict_in_generate", "use_return_dict", "gradient_checkpointing",
    "summary_first_dropout", "prefix", "cross_attention_hidden_size", "tf_legacy_loss", "use_bfloat16",
    "tie_word_embeddings",      # canonicalization unties tied embeddings before any matching
})
DROPOUT_SUFFIXES = ("dropout", "_pdrop", "drop_rate", "dropout_prob", "drop_path_rate", "dropout_rate")
WIDTH_FIELDS = frozenset({
    "n_embd", "hidden_size", "d_model", "embed_dim", "n_head", "num_attention_heads", "num_heads",
    "num_key_value_heads", "n_inner", "intermediate_size", "ffn_dim", "mlp_ratio", "head_dim", "kv_channels",
    "moe_intermediate_size", "rotary_dim",
})


def _ignored(name: str) -> bool:
    return name in IGNORED_FIELDS or name.endswith(DROPOUT_SUFFIXES)


def _same(x: Any, y: Any) -> bool:
    if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
        return True
    return bool(x == y)


def configuration(model: torch.nn.Module) -> dict[str, Any]:
    """What a model's architecture is configured by: its config (:func:`symdsl.spec.config.model_config`),
    plus the timm model name it was built from, if any.

    >>> net = torch.nn.Linear(2, 2); net.symdsl_config = {"in_features": 2}
    >>> configuration(net)
    {'in_features': 2}
    """
    config = model_config(model)
    timm_record = getattr(model, "symdsl_timm", None)
    if isinstance(timm_record, dict):
        config = {**timm_record.get("kwargs", {}), "timm model": timm_record.get("name"), **config}
    return config


def config_differences(a: dict[str, Any], b: dict[str, Any], allowed: Iterable[str] = ()) -> list[str]:
    """The fields that differ between two configurations, other than ignored and ``allowed`` ones.

    >>> config_differences({"n_head": 4, "attn_pdrop": 0.1, "n_embd": 8}, {"n_head": 2, "attn_pdrop": 0.0, "n_embd": 8})
    ['n_head']
    """
    allowed = set(allowed)
    fields = [k for k in dict.fromkeys([*a, *b]) if not _ignored(str(k)) and k not in allowed]
    return [k for k in fields if not _same(a.get(k), b.get(k))]


def width_fields(spec: Spec | None) -> set[str]:
    """The configuration fields a width lift may change: :data:`WIDTH_FIELDS` and the names the spec's dims read.

    >>> from symdsl.spec import load_spec_text
    >>> sorted(width_fields(load_spec_text("symdsl: 1\\nname: t\\ndims: {d: hidden // n_groups}\\n")) - WIDTH_FIELDS)
    ['hidden', 'n_groups']
    """
    names = set(WIDTH_FIELDS)
    if spec is not None:
        for value in spec.document.dims.values():
            names.update(re.findall(r"[A-Za-z_]\w*", str(value)))
    return names


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_compatible(models: Sequence[torch.nn.Module], spec: Spec | None = None, *, lift: bool = False) -> None:
    """Refuse models that are not one architecture, naming the first differing class, field or tensor.

    ``lift``: B may be narrower than A (the width lift runs next), so width fields may differ
    and shapes are compared by the lift. Tensor names must agree in every case.

    >>> a, b = torch.nn.Linear(2, 3), torch.nn.Linear(2, 3)
    >>> a.symdsl_config, b.symdsl_config = {"bias": True}, {"bias": False}
    >>> check_compatible([a, b])
    Traceback (most recent call last):
    ...
    symdsl.errors.UsageError: model 1 and model 0 differ in their configuration: bias False vs True; ...
    """
    first = models[0]
    config0 = configuration(first)
    allowed = width_fields(spec) if lift else set()
    for index, model in enumerate(models[1:], start=1):
        if type(model) is not type(first):
            raise UsageError(f"model {index} is a {type(model).__name__}, model 0 a {type(first).__name__}: "
                             "only models of one class can be aligned or merged")
        differ = config_differences(config0, configuration(model), allowed)
        if differ:
            config = configuration(model)
            listed = ", ".join(f"{k} {_shown(config.get(k))} vs {_shown(config0.get(k))}" for k in differ[:5])
            more = f" (and {len(differ) - 5} more)" if len(differ) > 5 else ""
            why = ("" if lift else " (only width fields may differ, and only when one model is narrower)")
            raise UsageError(f"model {index} and model 0 differ in their configuration: {listed}{more}; they are not "
                             f"one architecture, so their weights cannot be aligned{why}")
        names0, names = first.state_dict().keys(), model.state_dict().keys()
        if names0 != names:
            only0, only = sorted(names0 - names), sorted(names - names0)
            what = (f"model 0 has '{only0[0]}' and model {index} does not" if only0
                    else f"model {index} has '{only[0]}' and model 0 does not")
            raise UsageError(f"models differ in their tensors: {what}; align models of one depth and architecture")


def check_finite(models: Sequence[torch.nn.Module]) -> None:
    """Refuse a model with NaN or infinite weights, naming the model and the first such tensor.

    >>> net = torch.nn.Linear(2, 2)
    >>> with torch.no_grad():
    ...     net.bias[0] = float("nan")
    >>> check_finite([torch.nn.Linear(2, 2), net])
    Traceback (most recent call last):
    ...
    symdsl.errors.UsageError: model 1 has NaN or infinite values in 'bias'; ...
    """
    for index, model in enumerate(models):
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise UsageError(f"model {index} has NaN or infinite values in '{name}'; it cannot be aligned "
                                 "(was its training diverging?)")
            release_pages([tensor])     # a checkpoint's mapped pages, read once here: not kept resident


def check_data_fits(model: torch.nn.Module, dataset: Dataset) -> None:
    """Refuse a language-model dataset whose vocabulary or block is larger than the model reads.

    A text with more distinct characters than the model's embedding has rows would end in an
    index error deep inside torch; say instead which sizes disagree.

    >>> from symdsl.data import text_dataset
    >>> check_data_fits(torch.nn.Linear(2, 2), text_dataset("abc " * 50, block_size=8))   # nothing to compare
    """
    if dataset.task != "language_model":
        return
    embeddings = getattr(model, "get_input_embeddings", None)
    rows = getattr(embeddings(), "num_embeddings", None) if callable(embeddings) else None
    hint = ("evaluate on the data the models were trained on (the same --data, --max-chars and --tokenizer as "
            "`symdsl train`)")
    if isinstance(rows, int) and dataset.vocab_size is not None and dataset.vocab_size > rows:
        raise UsageError(f"data '{dataset.name}' has {dataset.vocab_size} tokens in its vocabulary, the model's "
                         f"embedding only {rows}; {hint}")
    config = model_config(model)
    positions = config.get("n_positions") or config.get("max_position_embeddings")
    if isinstance(positions, int) and dataset.block_size is not None and dataset.block_size > positions:
        raise UsageError(f"data '{dataset.name}' feeds blocks of {dataset.block_size} tokens, the model reads at most "
                         f"{positions}; {hint}")
