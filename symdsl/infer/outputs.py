"""Which of a model's outputs are *features*: tensors a symmetry may move if the draft declares
them equivariant (section 1.5 of docs/spec-language.md), rather than results that must not change.

A backbone (``BertModel``, ``LlamaModel``, a CLIP tower) returns its hidden states; whoever reads
them applies the same transform, so a symmetry of the residual stream may act on them as long
as the spec says so under ``outputs:``. Logits, losses and class scores are results: an output
that is not named here stays fixed (``returned by the model``), which is the conservative
choice for plain modules whose outputs have no names.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from ..graph.capture_common import without_kv_cache

# output names (Hugging Face ModelOutput fields) that carry features, not results
FEATURE_OUTPUTS = ("last_hidden_state", "pooler_output", "image_embeds", "text_embeds")


def feature_outputs(model: torch.nn.Module, inputs: Mapping[str, Any], count: int,
                    names: Sequence[str] = FEATURE_OUTPUTS) -> dict[int, str]:
    """Positions (among the ``count`` tensors the traced graph returns) of the outputs named in
    ``names``, by running ``model`` once on ``inputs`` as the capture does (no KV cache).

    Only a mapping of tensors (a ``ModelOutput``) has names; anything else, or a mapping whose
    tensors do not line up one for one with the traced outputs, gives ``{}``.

    >>> import transformers
    >>> cfg = transformers.BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
    ...                               intermediate_size=8, vocab_size=16)
    >>> bert = transformers.BertModel(cfg).eval()
    >>> feature_outputs(bert, {"input_ids": torch.zeros(1, 3, dtype=torch.long)}, 2)
    {0: 'last_hidden_state', 1: 'pooler_output'}
    >>> feature_outputs(torch.nn.Linear(2, 2), {"input": torch.zeros(1, 2)}, 1)
    {}
    """
    with torch.no_grad(), without_kv_cache(model):
        returned = model(**inputs)
    if not isinstance(returned, Mapping):
        return {}
    values = [(key, value) for key, value in returned.items() if value is not None]
    if len(values) != count or not all(isinstance(value, torch.Tensor) for _, value in values):
        return {}
    return {position: key for position, (key, _) in enumerate(values) if key in names}
