"""Small models and specs shared by the spec-language tests."""
from torch import nn


class ToyAttention(nn.Module):
    """A fused-qkv attention block stored like timm's (out, in): d = 8, 2 heads of 4."""

    def __init__(self, d: int = 8):
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)


ATTENTION_SPEC = """\
symdsl: 1
name: toy-attention
dims: {d: 8, h: 2, k: d // h}
sites:
  resid: {group: orthogonal, size: d, preserve: ones}
  heads: {group: permutation, size: h}
  qk:    {group: invertible, size: k, per: heads}
  ov:    {group: invertible, size: k, per: heads}
tensors:
  qkv.weight: "[heads qk | heads qk' | heads ov] resid'"
  qkv.bias: "[heads qk | heads qk' | heads ov]"
  proj.weight: "resid (heads ov')"
  proj.bias: resid
"""


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


MLP_SPEC = """\
symdsl: 1
name: mlp
dims: {d: 4}
sites:
  hidden: {group: permutation, size: d}
tensors:
  0.weight: "hidden _"
  0.bias: hidden
  2.weight: "_ hidden'"
invariant: [2.bias]
"""
