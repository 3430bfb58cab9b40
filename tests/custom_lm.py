"""A language model written by hand as a plain nn.Module, for the end-to-end custom-model test:
forward(self, tokens) -> logits, no Hugging Face keywords, no symdsl attributes. Built through
factories, as `symdsl align custom_lm:seed0 custom_lm:seed1` names them."""
from __future__ import annotations

import torch

VOCAB, WIDTH, HIDDEN = 96, 16, 32            # 96 symbols: stdlib-text's character vocabulary

SPEC = f"""symdsl: 1
name: custom-lm
description: a hand-written embedding -> MLP -> logits language model
example:
  factory: custom_lm:seed0
  inputs:
    tokens: {{randint: [0, {VOCAB}], shape: [2, 8]}}
sites:
  units: {{group: permutation, size: {HIDDEN}, doc: MLP units}}
tensors:
  up.weight: "units _"
  up.bias: units
  down.weight: "_ units'"
invariant: [embed.weight, down.bias]
"""


class CustomLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, WIDTH)
        self.up, self.down = torch.nn.Linear(WIDTH, HIDDEN), torch.nn.Linear(HIDDEN, VOCAB)

    def forward(self, tokens):                                   # (B, T) -> (B, T, VOCAB)
        return self.down(torch.relu(self.up(self.embed(tokens))))


def _seeded(seed: int) -> CustomLM:
    torch.manual_seed(seed)
    return CustomLM().eval()


def seed0() -> CustomLM:
    return _seeded(0)


def seed1() -> CustomLM:
    return _seeded(1)
