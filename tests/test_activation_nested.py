"""Activation matching of a permutation child nested in a permutation parent: grouped-query
attention's query heads, reordered inside their key/value head (qh.i per kv.i), recovered from
sub-head subspace similarity, and the per-kv maps (qk, ov) fitted with them applied."""
from __future__ import annotations

import pytest
import torch

import symdsl
from conftest import REGISTRIES, relative_distance
from symdsl.act import act_state_dict, random_transform
from symdsl.canon import canonicalize
from symdsl.spec import load_spec_text, resolve
from test_activation_matching import _assert_recovered, _batches
from test_llama import llama

GQA = {"num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 4}     # 4 query heads per kv head


def _canonical(cls_name: str, spec_name: str, seed: int = 0, **overrides):
    spec = symdsl.find_spec(spec_name)
    model = llama(cls_name, seed=seed, **overrides).double()
    resolved = resolve(spec, model, registries=REGISTRIES)
    canonicalize(model, resolved)
    return spec, model, resolved


def _match(spec, model, resolved, a, b, **options):
    return REGISTRIES.matchers.lookup("activation").match(resolved, a, b, model=model,
                                                          batches=_batches(spec, model, resolved), **options)


@pytest.mark.parametrize("cls_name, spec_name, overrides", [
    ("LlamaForCausalLM", "hf-llama", GQA),
    ("Qwen2ForCausalLM", "hf-qwen2", GQA),                  # q/k/v biases
    ("Qwen2ForCausalLM", "hf-qwen2", {}),                   # the example's 2 query heads per kv head
])
def test_query_heads_reordered_inside_their_group_are_recovered(cls_name, spec_name, overrides):
    spec, model, resolved = _canonical(cls_name, spec_name, **overrides)
    a = {k: v.clone() for k, v in model.state_dict().items()}
    hidden = random_transform(resolved, seed=3)
    identity = torch.arange(resolved.sites["qh.0"].size)
    assert any(not torch.equal(row, identity) for row in hidden["qh.0"])      # query heads really reordered
    b = act_state_dict(resolved, a, hidden)
    assert relative_distance(resolved, b, a) > 0.5
    result = _match(spec, model, resolved, a, b)
    _assert_recovered(resolved, a, b, hidden, result)      # qh equal to the hidden inverse, per kv position
    assert not result.info["identity"]
    assert result.objective[-1] < 1e-6                     # RMSNorm computes in float32 even in a float64 run
    for i in range(2):
        # qh is read where the heads are (kv qh): the query projection and the attention output;
        # qk and ov read them too, through qh, besides the keys and values
        assert len(result.info["nodes"][f"qh.{i}"]) == 2
        assert set(result.info["nodes"][f"qh.{i}"]) <= set(result.info["nodes"][f"qk.{i}"]) | set(
            result.info["nodes"][f"ov.{i}"])
        assert len(result.info["nodes"][f"qk.{i}"]) == 2 and len(result.info["nodes"][f"ov.{i}"]) == 2
        assert f"qh.{i} applied" in result.info["methods"][f"qk.{i}"]


def test_squared_residual_coordinates_are_not_read():
    # RMSNorm's x ** 2 carries the residual site squared: a rotated x does not give a rotated x ** 2
    spec, model, resolved = _canonical("LlamaForCausalLM", "hf-llama", **GQA)
    a = model.state_dict()
    b = act_state_dict(resolved, a, random_transform(resolved, seed=4))
    result = _match(spec, model, resolved, a, b)
    assert not any(node.startswith("pow") for node in result.info["nodes"]["resid"])
    assert any("squared coordinates" in note for note in result.info["notes"])
    assert relative_distance(resolved, act_state_dict(resolved, b, result.elements), a) < 1e-6


def test_module_hooks_read_the_query_heads_from_the_query_projection_alone():
    spec, model, resolved = _canonical("LlamaForCausalLM", "hf-llama", **GQA)
    a = model.state_dict()
    hidden = random_transform(resolved, seed=5)
    b = act_state_dict(resolved, a, hidden)
    result = _match(spec, model, resolved, a, b, evaluator="hooks")
    assert result.info["evaluator"] == ["hooks"]
    assert len(result.info["nodes"]["qh.0"]) == 1           # the attention op is no module's output
    _assert_recovered(resolved, a, b, hidden, result)


def test_unrelated_llamas_give_valid_elements_and_closer_activations():
    spec, model_a, resolved = _canonical("LlamaForCausalLM", "hf-llama", seed=0, **GQA)
    _, model_b, _ = _canonical("LlamaForCausalLM", "hf-llama", seed=1, **GQA)
    a, b = model_a.state_dict(), model_b.state_dict()
    result = _match(spec, model_a, resolved, a, b)
    for site, g in result.elements.items():
        info = resolved.sites[site]
        assert info.kind.contains(g, info.options), site
    before, after = result.objective
    assert after < before
    assert all(torch.isfinite(t).all() for t in act_state_dict(resolved, b, result.elements).values())


# A toy with the nested child in another place: hidden units laid out (h f c), h a permutation
# of P blocks, c a permutation of each block's g columns (per h), f an invertible map per h
# that acts alike on the g columns; read from one node (the hidden layer), f before c.
_TOY = """
symdsl: 1
name: toy-nested
sites:
  h: {group: permutation, size: 2}
  c: {group: permutation, size: 3, per: h}
  f: {group: invertible, size: 2, per: h}
tensors:
  0.weight: "(h f c) _"
  0.bias: "(h f c)"
  2.weight: "_ (h f' c)"
invariant: [2.bias]
"""


def test_a_nested_child_after_a_matrix_child_in_the_layout_is_recovered():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 12), torch.nn.Identity(), torch.nn.Linear(12, 3)).double()
    resolved = resolve(load_spec_text(_TOY), net, registries=REGISTRIES)
    a = {k: v.clone() for k, v in net.state_dict().items()}
    hidden = random_transform(resolved, seed=2)
    b = act_state_dict(resolved, a, hidden)
    batches = [{"input": torch.randn(64, 16, dtype=torch.float64)} for _ in range(2)]
    result = REGISTRIES.matchers.lookup("activation").match(resolved, a, b, model=net, batches=batches)
    assert result.info["nodes"]["c"] and result.info["nodes"]["c"] == result.info["nodes"]["f"]
    _assert_recovered(resolved, a, b, hidden, result)


def test_doctests():
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module("symdsl_builtins.matchers.activation_nested"))
    assert result.attempted > 0 and result.failed == 0
