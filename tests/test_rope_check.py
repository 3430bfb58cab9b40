"""The static check follows rotary position embeddings (RoPE): ``rotate_half`` and the cos/sin
tables built from ``cat((freqs, freqs), -1)`` act on each coordinate pair (i, i + n/2) as a
complex scalar, so a ``rotary`` site (half layout) passes them and any other kind is rejected
there; the patterns are recognised from the graph's structure only (fail closed otherwise)."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from conftest import REGISTRIES
from symdsl.graph import capture
from symdsl.graph.propagate import propagate
from symdsl.spec import load_spec_text, resolve

D, K = 8, 4


class Rope(nn.Module):
    """One query/key head with Llama's RoPE; ``variant`` breaks one piece of the pattern."""

    def __init__(self, variant: str = "llama"):
        super().__init__()
        torch.manual_seed(0)
        self.q, self.k = nn.Linear(D, K, bias=False), nn.Linear(D, K, bias=False)
        self.register_buffer("inv_freq", 1.0 / 10000 ** (torch.arange(0, K, 2).float() / K), persistent=False)
        self.variant = variant

    def forward(self, input):
        t = torch.arange(input.shape[1], dtype=input.dtype)
        freqs = t[:, None] * self.inv_freq[None, :].to(input.dtype)
        second = 2 * freqs if self.variant == "unequal-halves" else freqs
        emb = torch.cat((freqs, second), dim=-1)
        cos, sin = emb.cos()[None], emb.sin()[None]              # (1, t, K)
        q, k = self.q(input), self.k(input)
        if self.variant in ("llama", "unequal-halves"):
            q, k = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=0)
        else:
            half = K // 2
            x1, x2 = q[..., :half], q[..., half:]
            turned = torch.cat((x1, -x2), -1) if self.variant == "reflection" else torch.cat((-x2, x1), -1)
            q = q * cos + turned * sin
            if self.variant == "half-escapes":
                q = q + torch.cat((x1, x1), -1)
        return q @ k.transpose(-1, -2)


def findings(variant: str = "llama", group: str = "rotary", options: str = ""):
    model = Rope(variant).double().eval()
    spec = load_spec_text(f"{{symdsl: 1, name: rope, sites: {{qk: {{group: {group}, size: {K}{options}}}}}, "
                          "tensors: {q.weight: qk _, k.weight: qk' _}}")
    graph = capture(model, {"input": torch.randn(2, 5, D, dtype=torch.float64)})
    result = propagate(graph, resolve(spec, model, registries=REGISTRIES), op_rules=REGISTRIES.op_rules)
    return [(f.op, f.message) for f in result.findings]


def test_a_rotary_site_passes_llama_s_rope():
    assert findings() == []


def test_an_invertible_map_is_rejected_at_the_rotary_multiply_and_at_rotate_half():
    found = findings(group="invertible")
    assert {op for op, _ in found} == {"mul", "cat"}
    for op, message in found:
        assert "rotary position embedding" in message and "an invertible map does not commute" in message
        assert "declare the site 'group: rotary'" in message


@pytest.mark.parametrize("group", ["orthogonal", "permutation"])
def test_rotations_and_permutations_of_the_head_dimension_are_rejected_too(group):
    found = findings(group=group)
    assert found and all("does not commute" in m for _, m in found)


def test_the_interleaved_layout_does_not_match_rotate_half():
    found = findings(options=", pairs: interleaved")
    assert found and all("whose pairs are 'interleaved'" in m and "set 'pairs: half'" in m for _, m in found)


def test_a_cos_table_whose_halves_differ_is_a_fixed_vector_as_before():
    found = findings("unequal-halves")
    assert found and all(op == "mul" and "a tensor that no site touches" in m for op, m in found)


def test_swapping_without_the_turn_is_not_rotate_half():
    # cat((x1, -x2)) reflects each pair: no rotary element commutes with it
    found = findings("reflection")
    assert found and all(op == "slice" and "slice takes part of this axis" in m for op, m in found)


def test_a_half_used_outside_rotate_half_fails_closed():
    found = findings("half-escapes")
    assert found and found[0][0] == "slice" and "slice takes part of this axis" in found[0][1]


def test_a_pair_constant_factor_that_carries_the_site_is_an_elementwise_product():
    # q * cat(q', q') is pair-constant by construction, but it moves with the site: not a fixed table
    class Product(Rope):
        def forward(self, input):
            q, k = self.q(input), self.k(input)
            half = q[..., :K // 2]
            return (q * torch.cat((half, half), -1)) @ k.transpose(-1, -2)

    model = Product().double().eval()
    spec = load_spec_text(f"{{symdsl: 1, name: rope, sites: {{qk: {{group: rotary, size: {K}}}}}, "
                          "tensors: {q.weight: qk _, k.weight: qk' _}}")
    graph = capture(model, {"input": torch.randn(2, 5, D, dtype=torch.float64)})
    result = propagate(graph, resolve(spec, model, registries=REGISTRIES), op_rules=REGISTRIES.op_rules)
    assert result.findings and result.findings[0].op == "slice"
