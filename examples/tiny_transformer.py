"""A small pre-LayerNorm Transformer classifier, written as a plain ``torch.nn.Module``.

It is the running example of ``docs/spec-language.md``; its symmetries are declared in
``examples/tiny-transformer.yaml``. Check that spec from the repository root with::

    PYTHONPATH=. symdsl check examples/tiny-transformer.yaml

(``PYTHONPATH=.`` lets the spec's ``example.factory: examples.tiny_transformer:tiny_transformer``
be imported: the ``symdsl`` script does not put the current folder on ``sys.path``.)

Parameter names (what the spec binds), for ``layers=L``::

    embed.weight                  (vocab, d)       token embedding
    pos.weight                    (max_len, d)     learned positions
    blocks.{i}.ln1.weight/bias    (d,)             pre-attention LayerNorm
    blocks.{i}.attn.q/k/v.weight  (d, d)           nn.Linear: (out, in), out = (heads, head_dim) row-major
    blocks.{i}.attn.q/k/v.bias    (d,)
    blocks.{i}.attn.o.weight      (d, d)           in = (heads, head_dim) row-major
    blocks.{i}.attn.o.bias        (d,)
    blocks.{i}.ln2.weight/bias    (d,)             pre-MLP LayerNorm
    blocks.{i}.mlp.fc1.weight     (ffn, d)
    blocks.{i}.mlp.fc1.bias       (ffn,)
    blocks.{i}.mlp.fc2.weight     (d, ffn)
    blocks.{i}.mlp.fc2.bias       (d,)
    ln_f.weight/bias              (d,)             final LayerNorm
    head.weight                   (classes, d)     classifier
    head.bias                     (classes,)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head self-attention with separate q/k/v/o projections (no causal mask)."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        if d % heads:
            raise ValueError(f"d={d} is not divisible by heads={heads}")
        self.heads = heads
        self.head_dim = d // heads
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.o = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:  # (b, t, d) -> (b, heads, t, head_dim)
            return y.view(b, t, self.heads, self.head_dim).transpose(1, 2)

        y = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)))
        return self.o(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self, d: int, ffn: int):
        super().__init__()
        self.fc1 = nn.Linear(d, ffn)
        self.fc2 = nn.Linear(ffn, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, d: int, heads: int, ffn: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = Attention(d, heads)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = MLP(d, ffn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TinyTransformer(nn.Module):
    """Token ids (batch, tokens) -> class logits (batch, classes)."""

    def __init__(self, vocab: int, d: int, heads: int, layers: int, classes: int, *,
                 max_len: int = 64, ffn: int | None = None, pool: str = "mean"):
        super().__init__()
        if pool not in ("mean", "first"):
            raise ValueError(f"pool must be 'mean' or 'first', got {pool!r}")
        self.pool = pool
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(max_len, d)
        self.blocks = nn.ModuleList(Block(d, heads, ffn or 4 * d) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.embed(tokens) + self.pos(positions)
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x)
        pooled = x.mean(dim=1) if self.pool == "mean" else x[:, 0]
        return self.head(pooled)


def tiny_transformer(vocab: int = 100, d: int = 32, heads: int = 4, layers: int = 2, classes: int = 5,
                     **kwargs) -> TinyTransformer:
    """Factory used by the spec's ``example.factory`` (keyword arguments come from ``example.config``).

    >>> model = tiny_transformer(vocab=20, d=16, heads=2, layers=1, classes=3)
    >>> model(torch.zeros(2, 5, dtype=torch.long)).shape
    torch.Size([2, 3])
    """
    return TinyTransformer(vocab, d, heads, layers, classes, **kwargs)
