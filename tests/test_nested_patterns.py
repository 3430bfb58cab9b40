"""Splits nested in composite axes, ``(heads [qk | qkp])``: the grammar, binding (sizes, empty
parts), the action engine, weight matching's unfolding, the static types and the slice/split rules
that follow them."""
from __future__ import annotations

import doctest

import pytest
import torch
from torch import nn

from conftest import REGISTRIES, relative_distance
from symdsl.act import act_state_dict, random_transform
from symdsl.errors import SpecError
from symdsl.graph import capture
from symdsl.graph.propagate import binding_type, propagate
from symdsl.graph.types import is_typed, show
from symdsl.match.unfold import occurrences, unfold
from symdsl.spec import load_spec_text, resolve
from symdsl.spec import views as views_module
from symdsl.spec.pattern import PatternError, parse_pattern

F64 = torch.float64


def parts(axis):
    return [" ".join(map(str, p)) for p in axis.parts]


# ----------------------------------------------------------------------------- grammar


def test_a_split_nested_in_a_composite_keeps_its_shared_factors_in_every_part():
    (axis,) = parse_pattern("(heads [qk | qkp])")
    assert parts(axis) == ["heads qk", "heads qkp"] and axis.nest == ((2, 1),) and axis.is_split
    (axis,) = parse_pattern("(heads [qk | qkp | qk' | qkp' | ov])")           # GPT-NeoX's per-head q | k | v
    assert parts(axis)[2] == "heads qk'" and axis.nest == ((5, 1),)


def test_a_fused_axis_may_hold_nested_blocks_of_different_prefixes():
    (axis,) = parse_pattern("[(kv g [qk | qkp]) | (kv [qk' | qkp']) | kv ov]")   # Phi-3's qkv rows
    assert parts(axis) == ["kv g qk", "kv g qkp", "kv qk'", "kv qkp'", "kv ov"]
    assert axis.nest == ((2, 2), (2, 1), (1, 0))
    assert [b for b in axis.blocks()] == [(0, 2, 2), (2, 2, 1), (4, 1, 0)]


def test_factors_after_a_split_distribute_and_a_split_without_shared_factors_is_flat():
    assert parse_pattern("([a | b] k)") == parse_pattern("[a k | b k]")
    assert parse_pattern("(x [a | (b c)] k)")[0].parts[1] == parse_pattern("(x b c k)")[0].parts[0]
    assert parse_pattern("[a | ([b | c] k)]") == parse_pattern("[a | b k | c k]")


@pytest.mark.parametrize("text", ["(heads [qk | qkp])", "[(kv g [qk | qkp]) | (kv [qk' | qkp']) | kv ov] resid'",
                                  "[a | (h [b | c d])]", "(h g [a | b])"])
def test_nested_patterns_print_back_to_an_equivalent_pattern(text):
    axes = parse_pattern(text)
    assert parse_pattern(" ".join(str(a) for a in axes)) == axes


@pytest.mark.parametrize("text, column, words", [
    ("(a [b | c] [d | e])", 12, "at most one split"),
    ("[(h [a | b]) x | c]", 2, "must be a whole part"),
    ("[x (h [a | b]) | c]", 4, "must be a whole part"),
    ("(h [a | (x [b | c])])", 12, "unexpected '['"),
    ("(h [a])", 6, "at least two parts"),
    ("(h [a | ])", 9, "empty part"),
    ("[a | [b | c]]", 6, "unexpected '['"),
])
def test_malformed_nested_patterns_report_the_column(text, column, words):
    with pytest.raises(PatternError) as info:
        parse_pattern(text)
    assert info.value.column == column and words in str(info.value), (info.value.column, str(info.value))


# ----------------------------------------------------------------------------- binding and the action

H, R, P, D = 3, 2, 4, 5            # heads, rotary-like part, pass-through part, input size


def head_spec(extra: str = "", p: str = str(P)) -> str:
    return f"""
symdsl: 1
name: nested
dims: {{h: {H}, r: {R}, p: {p}}}
sites:
  heads: {{group: permutation, size: h}}
  a: {{group: invertible, size: r, per: heads}}
  b: {{group: invertible, size: p, per: heads}}
tensors:
  weight: "(heads [a | b]) _"
  bias: "(heads [a' | b])"
{extra}"""


def test_binding_checks_the_nested_axis_size_and_keeps_its_blocks():
    r = resolve(load_spec_text(head_spec()), nn.Linear(D, H * (R + P)), registries=REGISTRIES)
    axis = r.tensors["weight"].axes[0]
    assert axis.size == H * (R + P) and axis.nest == ((2, 1),)
    with pytest.raises(SpecError, match=r"has size 21, but the pattern gives 3\*2 \+ 3\*4 = 18"):
        resolve(load_spec_text(head_spec()), nn.Linear(D, 21), registries=REGISTRIES)


def test_the_action_moves_each_head_s_parts_by_that_head_s_maps():
    layer = nn.Linear(D, H * (R + P)).double()
    resolved = resolve(load_spec_text(head_spec()), layer, registries=REGISTRIES)
    g = random_transform(resolved, seed=1)
    moved = act_state_dict(resolved, layer.state_dict(), g)
    w = layer.weight.detach().reshape(H, R + P, D)[g["heads"]]          # heads permuted, then per head:
    expected = torch.cat([g["a"] @ w[:, :R], g["b"] @ w[:, R:]], dim=1).reshape(-1, D)
    torch.testing.assert_close(moved["weight"], expected)
    bias = layer.bias.detach().reshape(H, R + P)[g["heads"]]
    dual_a = torch.linalg.inv(g["a"]).mT                                # a' moves by g^-T
    expected_bias = torch.cat([(dual_a @ bias[:, :R, None])[..., 0], (g["b"] @ bias[:, R:, None])[..., 0]], dim=1)
    torch.testing.assert_close(moved["bias"], expected_bias.reshape(-1))


def test_a_site_of_size_zero_drops_the_parts_that_name_it():
    spec = load_spec_text(head_spec(p="0"))
    r = resolve(spec, nn.Linear(D, H * R), registries=REGISTRIES)
    assert "b" not in r.sites and r.tensors["weight"].axes[0].parts == r.tensors["weight"].axes[0].parts[:1]
    assert r.tensors["weight"].axes[0].nest == ()                         # (heads [a]) is (heads a)
    with pytest.raises(SpecError, match="a site's size must be positive"):
        resolve(load_spec_text(head_spec().replace("size: p,", "size: r - 3,")), nn.Linear(D, H * R),
                registries=REGISTRIES)


def test_tied_tensors_with_another_nesting_would_transform_differently():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.x = nn.Parameter(torch.randn(H * (R + P)))
            self.y = self.x
    spec = load_spec_text(head_spec().replace('  weight: "(heads [a | b]) _"\n  bias: "(heads [a\' | b])"',
                                             '  x: "(heads [a | b])"\n  y: "[heads a | heads b]"')
                          + "tied: [[x, y]]\n")
    with pytest.raises(SpecError, match="would transform differently"):
        resolve(spec, Two(), registries=REGISTRIES)


def test_unfolding_a_nested_occurrence_reads_that_part_of_every_head():
    layer = nn.Linear(D, H * (R + P)).double()
    resolved = resolve(load_spec_text(head_spec()), layer, registries=REGISTRIES)
    (occ,) = [o for o in occurrences(resolved, "b") if o.tensor == "weight"]
    w = layer.weight.detach()
    got = unfold(w, resolved.tensors["weight"], occ, parent="heads")               # (H, P, D)
    torch.testing.assert_close(got, w.reshape(H, R + P, D)[:, R:])
    heads = [o for o in occurrences(resolved, "heads") if o.tensor == "weight"]
    assert len(heads) == 2                                        # the shared factor, once per part
    rows = sum(unfold(w, resolved.tensors["weight"], o).shape[1] for o in heads)
    assert rows == (R + P) * D                                    # together: every entry of a head once


class Heads(nn.Module):
    """Scores of H heads whose query/key rows are (heads [a | b]): q.view(t, h, r + p), then the
    two parts sliced apart, contracted separately and summed (the shape of partial rotary)."""

    def __init__(self, order=("a", "b")):
        super().__init__()
        torch.manual_seed(0)
        self.q, self.k = nn.Linear(D, H * (R + P), bias=False), nn.Linear(D, H * (R + P), bias=False)

    def forward(self, input):                                              # input (t, D)
        q = self.q(input).view(-1, H, R + P).transpose(0, 1)               # (H, t, R + P)
        k = self.k(input).view(-1, H, R + P).transpose(0, 1)
        first = q[..., :R] @ k[..., :R].transpose(-1, -2)
        second = q[..., R:] @ k[..., R:].transpose(-1, -2)
        joined = torch.cat([q[..., :R], q[..., R:]], -1) @ torch.cat([k[..., :R], k[..., R:]], -1).transpose(-1, -2)
        return (first + second + joined).sum(0)


def heads_findings(k_pattern: str = "(heads [a' | b'])", cut: int = R):
    model = Heads().double().eval()
    spec = load_spec_text(head_spec().replace("  weight: \"(heads [a | b]) _\"\n  bias: \"(heads [a' | b])\"",
                                              f"  q.weight: \"(heads [a | b]) _\"\n  k.weight: \"{k_pattern} _\""))
    graph = capture(model, {"input": torch.randn(6, D, dtype=F64)})
    resolved = resolve(spec, model, registries=REGISTRIES)
    q_type = binding_type(resolved.tensors["q.weight"])
    assert show(q_type) == "[(heads [a | b]) _5]" and is_typed(q_type)     # a nested split still carries sites
    result = propagate(graph, resolved, op_rules=REGISTRIES.op_rules)
    return [(f.op, f.site, f.message) for f in result.findings]


def test_the_static_check_follows_a_nested_split_through_view_slice_and_cat():
    assert heads_findings() == []


def test_keys_bound_primal_are_caught_at_the_contraction_of_their_part():
    found = heads_findings("(heads [a | b'])")
    assert found and found[0][1] == "a" and "both sides primal" in found[0][2]


def test_weight_matching_recovers_a_hidden_element_through_nested_axes():
    model = Heads().double()
    spec = load_spec_text(head_spec().replace("  weight: \"(heads [a | b]) _\"\n  bias: \"(heads [a' | b])\"",
                                              "  q.weight: \"(heads [a | b]) _\"\n  k.weight: \"(heads [a' | b']) _\""))
    resolved = resolve(spec, model, registries=REGISTRIES)
    a = {k: v.clone() for k, v in model.state_dict().items()}
    b = act_state_dict(resolved, a, random_transform(resolved, seed=5))
    result = REGISTRIES.matchers["weight"].match(resolved, a, b)
    assert relative_distance(resolved, b, a) > 0.5
    assert relative_distance(resolved, act_state_dict(resolved, b, result.elements), a) < 1e-8


def test_doctests_of_the_views_module():
    assert doctest.testmod(views_module, raise_on_error=False).failed == 0
