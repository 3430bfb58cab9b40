"""Seeded factories for the benchmark architectures, sized from a dataset: a timm ViT, an HF GPT-2, an
HF Llama (RMSNorm, RoPE, grouped-query attention, SwiGLU) and an HF RoBERTa masked-LM encoder."""
from __future__ import annotations

import torch

from ...data import Dataset
from ...errors import UsageError

GPT2_EOS = 50256  # GPT-2's <|endoftext|> id; only meaningful with the full BPE vocabulary


def small_vit(dataset: Dataset, *, embed_dim: int = 64, depth: int = 2, num_heads: int = 4, mlp_ratio: float = 2.0,
              patch_size: int = 2, seed: int = 0) -> torch.nn.Module:
    """A timm ``VisionTransformer`` for ``dataset``'s images: class token, ``global_pool="token"``,
    initialised from ``seed`` (the caller's RNG state is left untouched).

    >>> from symdsl.data import load_dataset
    >>> vit = small_vit(load_dataset("digits"), seed=0)
    >>> type(vit).__name__, vit(torch.zeros(2, 1, 8, 8)).shape
    ('VisionTransformer', torch.Size([2, 10]))
    """
    if dataset.task != "classification" or None in (dataset.img_size, dataset.in_chans, dataset.num_classes):
        raise UsageError(f"small_vit needs an image classification dataset; '{dataset.name}' is {dataset.task}")
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:
        raise UsageError("small_vit needs timm: pip install 'symdsl[timm]'") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        kwargs = dict(img_size=dataset.img_size, patch_size=patch_size, in_chans=dataset.in_chans,
                      num_classes=dataset.num_classes, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                      mlp_ratio=mlp_ratio, class_token=True, global_pool="token")
        model = VisionTransformer(**kwargs)
    model.symdsl_config = kwargs   # what rebuilds it: symdsl.models.save_model records it
    return model


def small_gpt2(dataset: Dataset, *, n_embd: int = 64, n_layer: int = 2, n_head: int = 4,
               seed: int = 0) -> torch.nn.Module:
    """A ``transformers.GPT2LMHeadModel`` for ``dataset``: its vocabulary, ``n_positions = block_size``,
    every dropout 0, no KV cache (evaluation reads whole blocks), initialised from ``seed``.

    >>> from symdsl.data import text_dataset
    >>> gpt = small_gpt2(text_dataset("to be or not to be " * 30, block_size=16), seed=0)
    >>> gpt(input_ids=torch.zeros(2, 16, dtype=torch.long)).logits.shape
    torch.Size([2, 16, 7])
    """
    if dataset.task != "language_model":
        raise UsageError(f"small_gpt2 needs a language-model dataset; '{dataset.name}' is {dataset.task}")
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        raise UsageError("small_gpt2 needs transformers: pip install 'symdsl[hf]'") from None
    from ...models.build import quiet_transformers

    # GPT-2's default <|endoftext|> id does not exist in a character vocabulary.
    special = GPT2_EOS if dataset.vocab_size > GPT2_EOS else None
    config = GPT2Config(vocab_size=dataset.vocab_size, n_positions=dataset.block_size, n_embd=n_embd,
                        n_layer=n_layer, n_head=n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        use_cache=False, bos_token_id=special, eos_token_id=special)
    with torch.random.fork_rng(devices=[]), quiet_transformers():
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
    return model


def small_llama(dataset: Dataset, *, hidden_size: int = 64, num_hidden_layers: int = 2, num_attention_heads: int = 4,
                num_key_value_heads: int = 2, intermediate_size: int | None = None, tie_word_embeddings: bool = True,
                seed: int = 0) -> torch.nn.Module:
    """A ``transformers.LlamaForCausalLM`` for ``dataset``: its vocabulary, grouped-query attention
    (``num_key_value_heads`` shared by the query heads), RoPE, SwiGLU units (``intermediate_size``,
    default 8/3 of the width rounded to 8), tied embeddings like SmolLM2, no KV cache, from ``seed``.

    >>> from symdsl.data import text_dataset
    >>> llama = small_llama(text_dataset("to be or not to be " * 30, block_size=16), seed=0)
    >>> llama(input_ids=torch.zeros(2, 16, dtype=torch.long)).logits.shape, llama.config.num_key_value_heads
    (torch.Size([2, 16, 7]), 2)
    """
    if dataset.task != "language_model":
        raise UsageError(f"small_llama needs a language-model dataset; '{dataset.name}' is {dataset.task}")
    try:
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError:
        raise UsageError("small_llama needs transformers: pip install 'symdsl[hf]'") from None
    from ...models.build import quiet_transformers

    if num_attention_heads % num_key_value_heads:
        raise UsageError(f"num_attention_heads ({num_attention_heads}) must be a multiple of num_key_value_heads "
                         f"({num_key_value_heads})")
    units = intermediate_size or 8 * ((8 * hidden_size // 3 + 7) // 8)
    config = LlamaConfig(vocab_size=dataset.vocab_size, max_position_embeddings=dataset.block_size,
                         hidden_size=hidden_size, intermediate_size=units, num_hidden_layers=num_hidden_layers,
                         num_attention_heads=num_attention_heads, num_key_value_heads=num_key_value_heads,
                         tie_word_embeddings=tie_word_embeddings, use_cache=False, bos_token_id=None,
                         eos_token_id=None, pad_token_id=None)
    with torch.random.fork_rng(devices=[]), quiet_transformers():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model


def small_roberta(dataset: Dataset, *, hidden_size: int = 64, num_hidden_layers: int = 2, num_attention_heads: int = 4,
                  intermediate_size: int = 256, seed: int = 0) -> torch.nn.Module:
    """A ``transformers.RobertaForMaskedLM`` for a masked-LM ``dataset`` (``mlm:PATH``): its vocabulary
    and pad id, ``max_position_embeddings = block_size + pad_id + 1`` (RoBERTa counts positions
    from ``pad_id + 1``: block + 2 with the pad at 1), one token type, every dropout 0, the decoder
    tied to the word embeddings, initialised from ``seed``.

    >>> from symdsl.data import masked_text_dataset
    >>> bert = small_roberta(masked_text_dataset("to be or not to be " * 30, block_size=16), seed=0)
    >>> bert(input_ids=torch.zeros(2, 16, dtype=torch.long)).logits.shape, bert.config.max_position_embeddings
    (torch.Size([2, 16, 9]), 18)
    """
    if dataset.task != "masked_language_model":
        raise UsageError(f"small_roberta needs a masked-language-model dataset (mlm:PATH); '{dataset.name}' is "
                         f"{dataset.task}")
    pad = getattr(dataset.tokenizer, "pad_id", None)
    if pad is None:
        raise UsageError(f"dataset '{dataset.name}': its tokenizer has no pad_id, which RoBERTa's position ids need")
    try:
        from transformers import RobertaConfig, RobertaForMaskedLM
    except ImportError:
        raise UsageError("small_roberta needs transformers: pip install 'symdsl[hf]'") from None
    from ...models.build import quiet_transformers

    config = RobertaConfig(vocab_size=dataset.vocab_size, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
                           num_attention_heads=num_attention_heads, intermediate_size=intermediate_size,
                           max_position_embeddings=dataset.block_size + pad + 1, type_vocab_size=1,
                           pad_token_id=pad, bos_token_id=None, eos_token_id=None, hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0, use_cache=False)
    with torch.random.fork_rng(devices=[]), quiet_transformers():
        torch.manual_seed(seed)
        model = RobertaForMaskedLM(config)
    return model
