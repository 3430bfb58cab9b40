"""Per-architecture facts the width lift needs beyond the spec: one small table, fail closed.

A spec says how every tensor transforms; it does not say how attention scores depend on the head
dim, nor how to build a fresh model of a given configuration. An architecture can be lifted only
if this table has a :class:`WidthAdapter` for its spec; any other spec is refused with an error
naming :func:`register_adapter`.

To add an architecture, write its two functions and register it::

    register_adapter(WidthAdapter(
        spec="my-spec", residual="resid", query_key=r"qk\\.(\\d+)",
        width_keys=("hidden_size", "num_heads", "ffn_size"),
        score_scale=my_score_scale,      # (model, backbone prefix, layer) -> factor on q.k
        build=build_from_config,         # (wide model) -> fresh model of its class and config
    ))

>>> sorted(ADAPTERS)
['hf-gpt2', 'timm-vit']
>>> get_adapter("hf-bert")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
symdsl.errors.UsageError: no width-lift rule for spec 'hf-bert' ...
"""
from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..errors import UsageError
from ..spec.config import model_config

ScoreScale = Callable[[torch.nn.Module, str, int], float]
Builder = Callable[[torch.nn.Module], torch.nn.Module]


@dataclass(frozen=True)
class WidthAdapter:
    """What lifting one architecture needs besides its spec.

    Attributes:
        spec: the spec's name.
        residual: the residual-stream site (LayerNorm-normalised, writers mean-centred).
        query_key: a regex over site names whose one group is the layer index: the per-head
            sites whose primal side is the query and dual side the key of that layer.
        width_keys: configuration keys allowed to differ between narrow and wide models.
        score_scale: ``(model, prefix, layer) -> float``, the factor multiplying ``q . k`` in
            that layer's softmax; it raises :class:`UsageError` on a variant it does not know.
        build: ``(wide model) -> a fresh model`` of the same class and configuration.
    """

    spec: str
    residual: str
    query_key: str
    width_keys: tuple[str, ...]
    score_scale: ScoreScale
    build: Builder

    def query_key_layer(self, site: str) -> int | None:
        """The layer whose query/key basis ``site`` is, or None.

        >>> get_adapter("hf-gpt2").query_key_layer("qk.3"), get_adapter("hf-gpt2").query_key_layer("ov.3")
        (3, None)
        """
        found = re.fullmatch(self.query_key, site)
        return int(found.group(1)) if found else None


ADAPTERS: dict[str, WidthAdapter] = {}

# Configuration keys that never change what a model computes in eval mode (metadata, dropout,
# initialisation): they may differ between the narrow and the wide model.
IGNORED_CONFIG_KEYS = frozenset({
    "transformers_version", "architectures", "dtype", "torch_dtype", "_name_or_path", "output_hidden_states",
    "output_attentions", "return_dict", "use_cache", "tie_word_embeddings", "resid_pdrop", "embd_pdrop",
    "attn_pdrop", "summary_first_dropout", "initializer_range", "drop_rate", "pos_drop_rate", "patch_drop_rate",
    "proj_drop_rate", "attn_drop_rate", "drop_path_rate", "weight_init",
})


def register_adapter(adapter: WidthAdapter) -> WidthAdapter:
    """Add (or replace) the adapter for ``adapter.spec``; returns it."""
    ADAPTERS[adapter.spec] = adapter
    return adapter


def get_adapter(spec_name: str) -> WidthAdapter:
    """The adapter for a spec; :class:`UsageError` when the architecture has no lift rule."""
    adapter = ADAPTERS.get(spec_name)
    if adapter is None:
        raise UsageError(f"no width-lift rule for spec '{spec_name}' (known: {', '.join(sorted(ADAPTERS))}); "
                         "the lift must know how attention scores scale with the head dim: add one with "
                         "symdsl.width.adapters.register_adapter (see docs/width.md)")
    return adapter


def constructor_config(model: torch.nn.Module) -> dict[str, Any] | None:
    """The configuration a model was built from, to compare two models' configurations; None when
    none is recorded (then there is nothing to compare).

    It is :func:`symdsl.spec.model_config` where that finds a record (a transformers config or
    ``symdsl_config``), else the keyword arguments of the timm model the loader recorded in
    ``symdsl_timm``; unlike ``model_config`` it tells "no record" (None) from an empty one ({}).

    >>> net = torch.nn.Linear(3, 4)
    >>> constructor_config(net) is None
    True
    >>> net.symdsl_timm = {"name": "vit_tiny_patch16_224", "kwargs": {"num_classes": 10}}
    >>> constructor_config(net)
    {'num_classes': 10}
    """
    config = getattr(model, "config", None)
    if (config is not None and hasattr(config, "to_dict")) or getattr(model, "symdsl_config", None) is not None:
        return model_config(model)
    timm_record = getattr(model, "symdsl_timm", None)
    if timm_record is not None:
        return dict(timm_record.get("kwargs", {}))
    return None


# --------------------------------------------------------------------------- builders


def build_transformers(wide: torch.nn.Module) -> torch.nn.Module:
    """A fresh model of ``wide``'s transformers class from a copy of its config (RNG state untouched)."""
    from ..models.build import quiet_transformers

    with torch.random.fork_rng(devices=[]), quiet_transformers():
        return type(wide)(copy.deepcopy(wide.config))


def build_timm(wide: torch.nn.Module) -> torch.nn.Module:
    """A fresh timm model from its recorded constructor arguments (``symdsl_config`` as set by
    :func:`symdsl.experiments.train.small_vit`, or ``symdsl_timm`` as set by the loader); a copy otherwise."""
    with torch.random.fork_rng(devices=[]):
        if getattr(wide, "symdsl_config", None) is not None:
            model = type(wide)(**wide.symdsl_config)
            model.symdsl_config = dict(wide.symdsl_config)
        elif getattr(wide, "symdsl_timm", None) is not None:
            import timm

            record = wide.symdsl_timm
            model = timm.create_model(record["name"], pretrained=False, **record.get("kwargs", {}))
            model.symdsl_timm = copy.deepcopy(record)
        else:
            # no recorded configuration: the model itself is the only faithful description of it
            model = copy.deepcopy(wide)
    return model


# --------------------------------------------------------------------------- attention scales


def gpt2_score_scale(model: torch.nn.Module, prefix: str, layer: int) -> float:
    """GPT-2: ``q . k`` is multiplied by ``head_dim ** -0.5`` when ``scale_attn_weights`` (else 1),
    divided by ``layer_idx + 1`` when ``scale_attn_by_inverse_layer_idx``. Cross-checked against the
    module's own ``scaling`` where transformers stores it."""
    attn = model.get_submodule(f"{prefix}h.{layer}.attn")
    if getattr(attn, "is_cross_attention", False):
        raise UsageError(f"'{prefix}h.{layer}.attn' is cross-attention: no width-lift rule")
    try:
        scale = attn.head_dim ** -0.5 if attn.scale_attn_weights else 1.0
        if attn.scale_attn_by_inverse_layer_idx:
            scale /= float(attn.layer_idx + 1)
    except AttributeError as exc:
        raise UsageError(f"'{prefix}h.{layer}.attn' ({type(attn).__name__}) lacks {exc.name!r}: this GPT-2 "
                         "attention is not the one the width-lift rule knows") from None
    stored = getattr(attn, "scaling", None)
    if stored is not None and not math.isclose(float(stored), scale, rel_tol=1e-12):
        raise UsageError(f"'{prefix}h.{layer}.attn' scales scores by {stored}, not the {scale} the GPT-2 "
                         "width-lift rule expects")
    return scale


def timm_score_scale(model: torch.nn.Module, prefix: str, layer: int) -> float:
    """timm ``Attention``: ``q . k`` times ``head_dim ** -0.5`` (``self.scale`` on the eager path,
    scaled_dot_product_attention's default on the fused one; they must agree)."""
    name = f"{prefix}blocks.{layer}.attn"
    attn = model.get_submodule(name)
    for part in ("q_norm", "k_norm", "norm"):
        if not isinstance(getattr(attn, part, torch.nn.Identity()), torch.nn.Identity):
            raise UsageError(f"'{name}.{part}' is a normalisation: no width-lift rule for qk-norm / scale-norm")
    if getattr(attn, "gate", None) is not None:
        raise UsageError(f"'{name}' is gated attention: no width-lift rule")
    head_dim = getattr(attn, "head_dim", None)
    stored = getattr(attn, "scale", None)
    if head_dim is None or stored is None:
        raise UsageError(f"'{name}' ({type(attn).__name__}) has no head_dim/scale: not the timm Attention "
                         "the width-lift rule knows")
    scale = head_dim ** -0.5
    if not math.isclose(float(stored), scale, rel_tol=1e-12):
        raise UsageError(f"'{name}' has scale {stored} but its fused path uses head_dim ** -0.5 = {scale}; "
                         "no width-lift rule for a custom scale")
    return scale


register_adapter(WidthAdapter(spec="hf-gpt2", residual="resid", query_key=r"qk\.(\d+)",
                              width_keys=("n_embd", "n_head", "n_inner"), score_scale=gpt2_score_scale,
                              build=build_transformers))
register_adapter(WidthAdapter(spec="timm-vit", residual="resid", query_key=r"qk\.(\d+)",
                              width_keys=("embed_dim", "num_heads", "mlp_ratio"), score_scale=timm_score_scale,
                              build=build_timm))
