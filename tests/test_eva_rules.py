"""The two static rules timm's EVA02 needs, on toy modules:

* a RoPE table precomputed as a buffer (timm's ``RotaryEmbeddingCat``: ``cat((sin, cos), -1)``,
  chunked in each attention, applied with ``rot``): its value is read, and a product with a window
  constant on every pair of the layout scales each pair (a ``rotary`` site passes; a site of the
  other layout, a non-rotary kind, or a table whose pairs differ is rejected at the ``mul``);
* a zero buffer inside a bias concatenation (EVA's ``cat((q_bias, k_bias, v_bias))`` with a zero
  ``k_bias`` buffer): zeros fit any site; a non-zero buffer, or a function of the zero buffer that
  is not zero, fails closed at the ``linear`` that adds the bias.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from timm.layers.pos_embed_sincos import apply_rot_embed_cat, build_rotary_pos_embed
from torch import nn
from transformers.models.llama.modeling_llama import rotate_half

from conftest import REGISTRIES
from symdsl.graph import capture
from symdsl.graph.propagate import propagate
from symdsl.spec import load_spec_text, resolve

D, K, N = 8, 4, 4          # model width, head dim, patches (a 2x2 grid)


class TableRope(nn.Module):
    """One query/key head rotated with a precomputed (N, 2K) sin|cos buffer, as timm's EVA does;
    ``layout``: the table's pair layout; ``broken``: one entry of one pair changed."""

    def __init__(self, layout: str = "interleaved", broken: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.q, self.k = nn.Linear(D, K, bias=False), nn.Linear(D, K, bias=False)
        self.half = layout == "half"
        sin, cos = build_rotary_pos_embed([2, 2], dim=K, in_pixels=False, ref_feat_shape=[2, 2],
                                          rotate_half=self.half)
        table = torch.cat([sin, cos], -1)                  # (N, 2K)
        if broken:
            table[1, 0] += 0.25                            # sin of pair 0 at patch 1 differs from its partner
        self.register_buffer("pos_embed", table, persistent=False)

    def forward(self, x):                                  # x: (B, N, D)
        q, k = self.q(x), self.k(x)                        # (B, N, K)
        if self.half:
            # timm's half layout turns with chunks (not followed yet); transformers' rotate_half slices
            sin, cos = self.pos_embed.chunk(2, -1)         # (N, K) each
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
        else:
            q, k = apply_rot_embed_cat(q, self.pos_embed), apply_rot_embed_cat(k, self.pos_embed)
        return q @ k.transpose(-1, -2)                     # (B, N, N) scores


class ZeroBias(nn.Module):
    """A fused qkv projection whose bias is ``cat((q_bias, k_bias, v_bias))`` with ``k_bias`` a
    buffer (zero unless ``value``); ``exp``: the buffer enters as ``exp(k_bias)`` (ones)."""

    def __init__(self, value: float = 0.0, exp: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.qkv, self.out = nn.Linear(D, 3 * K, bias=False), nn.Linear(K, D, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.randn(K)), nn.Parameter(torch.randn(K))
        self.register_buffer("k_bias", torch.full((K,), value), persistent=False)
        self.exp = exp

    def forward(self, x):                                  # x: (B, N, D)
        k_bias = self.k_bias.exp() if self.exp else self.k_bias
        qkv = F.linear(x, self.qkv.weight, torch.cat((self.q_bias, k_bias, self.v_bias)))
        q, k, v = qkv.chunk(3, -1)                         # (B, N, K) each
        return (q @ k.transpose(-1, -2)) @ self.out(v)      # (B, N, D)


def _findings(model, spec_text: str):
    model = model.double().eval()
    buffers = dict(model.named_buffers())
    graph = capture(model, {"x": torch.randn(2, N, D, dtype=torch.float64)})

    def buffer(node: str):
        names = graph.params.get(node, [])
        return buffers[names[0]] if names and names[0] in buffers else None

    result = propagate(graph, resolve(load_spec_text(spec_text), model, registries=REGISTRIES),
                       op_rules=REGISTRIES.op_rules, buffer=buffer)
    return [(f.node, f.op, f.message) for f in result.findings]


def rope_findings(layout="interleaved", group="rotary", pairs="interleaved", broken=False):
    options = f", pairs: {pairs}" if group == "rotary" else ""
    return _findings(TableRope(layout, broken),
                     f"{{symdsl: 1, name: t, sites: {{qk: {{group: {group}, size: {K}{options}}}}}, "
                     "tensors: {q.weight: qk _, k.weight: qk' _}}")


@pytest.mark.parametrize("layout", ["interleaved", "half"])
def test_a_rotary_site_of_the_table_s_layout_passes_the_precomputed_table(layout):
    assert rope_findings(layout, pairs=layout) == []


def test_a_site_declared_with_the_other_pairs_is_rejected_at_the_table_multiply():
    found = rope_findings("interleaved", pairs="half")
    assert found, "the interleaved table must not pass a half-layout site"
    muls = [f for f in found if f[1] == "mul"]
    assert muls and all("set 'pairs: interleaved'" in message for _, _, message in muls)
    assert all(node.startswith("mul") for node, _, _ in muls)          # the finding names the graph node


@pytest.mark.parametrize("group", ["invertible", "orthogonal"])
def test_a_map_that_does_not_commute_with_the_rotation_is_rejected(group):
    found = rope_findings(group=group)
    assert found and all("does not commute" in message for _, _, message in found)


def test_a_table_whose_pairs_differ_is_not_a_rotation_table():
    found = rope_findings(broken=True)
    assert found and any(op == "mul" and "no site touches" in message for _, op, message in found)


BIAS_SPEC = (f"{{symdsl: 1, name: b, sites: {{qk: {{group: invertible, size: {K}}}, ov: {{group: invertible, size: {K}}}}}, "
             "tensors: {qkv.weight: \"[qk | qk' | ov] _\", q_bias: qk, v_bias: ov, out.weight: \"_ ov'\"}}")


def test_a_zero_buffer_fits_the_key_part_of_a_fused_bias():
    assert _findings(ZeroBias(), BIAS_SPEC) == []


@pytest.mark.parametrize("variant", [dict(value=0.5), dict(exp=True)])
def test_a_non_zero_buffer_fails_closed_at_the_linear(variant):
    found = _findings(ZeroBias(**variant), BIAS_SPEC)
    linear = [(node, message) for node, op, message in found if op == "linear"]
    assert linear, found
    node, message = linear[0]
    assert node == "linear" and "linear bias" in message and "qk'" in message
