"""Which of a model's outputs a draft claims, and which are *features*: tensors a symmetry may
move if the draft declares them equivariant (section 1.5 of docs/spec-language.md), rather than
results that must not change.

A backbone (``BertModel``, ``LlamaModel``, a CLIP tower) returns its hidden states; whoever reads
them applies the same transform, so a symmetry of the residual stream may act on them as long
as the spec says so under ``outputs:``. Logits, losses and class scores are results: an output
that is not named here stays fixed (``returned by the model``), which is the conservative
choice for plain modules whose outputs have no names. A model that returns logits beside the
nested outputs of its parts (CLIPModel's ``text_model_output``) or its encoder's states (T5's
``encoder_last_hidden_state``) claims the logits (``example.output``) and the features; those
intermediate outputs are no claim.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from ..graph.output_names import is_intermediate

# output names (Hugging Face ModelOutput fields) that carry features, not results
FEATURE_OUTPUTS = ("last_hidden_state", "pooler_output", "image_embeds", "text_embeds")


def feature_outputs(model) -> tuple[str, ...]:
    """The output names that carry features for ``model``: :data:`FEATURE_OUTPUTS`, and ``output``
    (the bare tensor) for a timm model built with ``num_classes=0``, whose head is an Identity, so
    that it returns the pooled features (aimv2 and EVA02 ship that way), not class scores.

    >>> import torch
    >>> feature_outputs(torch.nn.Linear(2, 2)) == FEATURE_OUTPUTS
    True
    """
    if type(model).__module__.startswith("timm.") and getattr(model, "num_classes", None) == 0:
        return FEATURE_OUTPUTS + ("output",)
    return FEATURE_OUTPUTS


@dataclass
class OutputPlan:
    """``primary``: the output to name in ``example.output`` (None: the model's first);
    ``features``: position -> name of feature outputs; ``ignored``: positions claimed by nothing."""

    primary: str | None = None
    features: dict[int, str] = field(default_factory=dict)
    ignored: set[int] = field(default_factory=set)


def plan_outputs(names: Sequence[str] | None, features: Sequence[str] = FEATURE_OUTPUTS) -> OutputPlan:
    """Decide the claims from the traced outputs' names (:func:`symdsl.graph.output_names.output_names`).

    >>> plan_outputs(["last_hidden_state", "pooler_output"]).features
    {0: 'last_hidden_state', 1: 'pooler_output'}
    >>> p = plan_outputs(["logits_per_image", "logits_per_text", "text_embeds", "image_embeds",
    ...                   "text_model_output.last_hidden_state", "text_model_output.pooler_output"])
    >>> p.primary, p.features, sorted(p.ignored)
    ('logits_per_image', {2: 'text_embeds', 3: 'image_embeds'}, [4, 5])
    >>> plan_outputs(None)
    OutputPlan(primary=None, features={}, ignored=set())
    """
    if names is None:
        return OutputPlan()
    plan = OutputPlan(features={p: n for p, n in enumerate(names) if n in features})
    # beside logits, the intermediate states of the model's parts are no claim: a two-tower
    # model's nested tower outputs, a seq2seq model's encoder_last_hidden_state
    parts = [p for p, n in enumerate(names) if is_intermediate(n)]
    logits = [n for n in names if n.startswith("logits")]
    if parts and logits:
        plan.primary, plan.ignored = logits[0], set(parts)
    return plan
