"""Names of the tensors a traced model returns, and keeping only the outputs a spec claims.

A capture flattens whatever ``forward`` returns into a list of tensors; the checks and
``symdsl infer`` need their names (``logits``, ``last_hidden_state``, a two-tower model's
``text_model_output.last_hidden_state``) to tell the claimed outputs from the others.
"""
from __future__ import annotations

from typing import Any, Iterator, Mapping

import torch

from .capture_common import split_inputs, without_kv_cache
from .capture_types import CapturedGraph, Ref


class _Unnamed(Exception):
    """The output holds something whose flattening the capture may not match (a cache object)."""


def _flatten(value: Any, prefix: str) -> Iterator[str]:
    if isinstance(value, torch.Tensor):
        yield prefix or "output"
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if item is not None:
                yield from _flatten(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, (tuple, list)):
        for index, item in enumerate(value):
            yield from _flatten(item, f"{prefix}.{index}" if prefix else str(index))
    elif value is not None and not isinstance(value, (int, float, bool, str)):
        raise _Unnamed(type(value).__name__)


def output_names(model: torch.nn.Module, inputs: Any, count: int) -> list[str] | None:
    """The names of the ``count`` tensors a capture of ``model`` on ``inputs`` returns, in order
    (nested outputs joined with dots), by running it once as the capture does (no KV cache).
    None when the names cannot be lined up with the traced outputs.

    >>> import transformers
    >>> cfg = transformers.BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
    ...                               intermediate_size=8, vocab_size=16)
    >>> output_names(transformers.BertModel(cfg).eval(), {"input_ids": torch.zeros(1, 3, dtype=torch.long)}, 2)
    ['last_hidden_state', 'pooler_output']
    >>> output_names(torch.nn.Linear(2, 2), {"input": torch.zeros(1, 2)}, 1)
    ['output']
    """
    args, kwargs = split_inputs(inputs)
    with torch.no_grad(), without_kv_cache(model):
        returned = model(*args, **kwargs)
    try:
        names = list(_flatten(returned, ""))
    except _Unnamed:
        return None
    return names if len(names) == count else None


# outputs that only expose a part's intermediate states: a seq2seq model's encoder states, and
# (dotted names) a two-tower model's nested tower outputs (CLIPModel's text_model_output)
INTERMEDIATE_PREFIXES = ("encoder_",)


def is_intermediate(name: str) -> bool:
    """Is the output ``name`` a part's intermediate state rather than a result of the model?

    >>> is_intermediate("text_model_output.last_hidden_state"), is_intermediate("encoder_last_hidden_state")
    (True, True)
    >>> is_intermediate("pooler_output"), is_intermediate("logits")
    (False, False)
    """
    return "." in name or name.startswith(INTERMEDIATE_PREFIXES)


def keep_outputs(graph: CapturedGraph, positions: list[int]) -> None:
    """Keep only the returned tensors at ``positions`` (in place): the others are no claim of the spec.

    >>> from symdsl.graph.capture_types import OpNode
    >>> g = CapturedGraph("demo", [OpNode("x", "input", (), {}, "x", (2,)),
    ...                            OpNode("y", "neg", (Ref("x"),), {}, "neg", (2,)),
    ...                            OpNode("output", "output", (Ref("x"), Ref("y")), {}, "output")],
    ...                   params={}, inputs=["x"], outputs=["x", "y"])
    >>> keep_outputs(g, [1]); g.outputs, g.node("output").args
    (['y'], (%y,))
    """
    kept = [graph.outputs[p] for p in positions]
    for node in graph.nodes:
        if node.op == "output":
            node.args = tuple(Ref(name) for name in kept)
    graph.outputs = kept
    graph.reindex()
