"""Activation matching on the decoder families whose sites sit where the first reader missed them:
q/k split into a rotary and a pass-through part nested in the head factor (GPT-NeoX, GPT-J,
Phi-3: ``(heads [qk | qkp])``), and a mixture's stacked experts gathered per token (Mixtral:
``gate_up_proj[ids]``, per-expert units without an expert axis). A hidden element is recovered
on each, every site read from activations."""
from __future__ import annotations

import pytest
import torch

import symdsl
from conftest import REGISTRIES, relative_distance
from symdsl.act import act_state_dict, random_transform
from symdsl.canon import canonicalize
from symdsl.graph.types import Atom, SplitAxis
from symdsl.models.kernels import experts_implementation
from symdsl.spec import resolve
from symdsl_builtins.matchers.activation_gather import rows_follow, scatter_rows
from symdsl_builtins.matchers.activation_graph import plans_for
from test_activation_matching import _assert_recovered, _batches
from test_gptj import gptj
from test_mixtral import mixtral
from test_neox import neox
from test_phi3 import phi3

FAMILIES = {"hf-gpt-neox": neox, "hf-gptj": gptj, "hf-phi3": phi3, "hf-mixtral": mixtral}


def _recover(spec_name: str, seed: int = 3):
    spec = symdsl.find_spec(spec_name)
    model = FAMILIES[spec_name]().double()
    resolved = resolve(spec, model, registries=REGISTRIES)
    canonicalize(model, resolved)
    a = {k: v.clone() for k, v in model.state_dict().items()}
    hidden = random_transform(resolved, seed=seed, nontrivial=True)
    b = act_state_dict(resolved, a, hidden)
    assert relative_distance(resolved, b, a) > 0.3                  # the hidden element really moves B
    result = REGISTRIES.matchers.lookup("activation").match(resolved, a, b, model=model,
                                                            batches=_batches(spec, model, resolved))
    return model, resolved, a, b, hidden, result


@pytest.mark.parametrize("spec_name", sorted(FAMILIES))
def test_a_hidden_element_is_recovered_with_every_site_read_from_activations(spec_name):
    model, resolved, a, b, hidden, result = _recover(spec_name)
    _assert_recovered(resolved, a, b, hidden, result)                # distance < 1e-6, elements = hidden inverses
    assert result.info["identity"] == {}
    assert result.objective[0] > 0.1 and result.objective[-1] < 1e-6


@pytest.mark.parametrize("spec_name, rotary", [("hf-gpt-neox", "qk.0"), ("hf-gptj", "qk.0"), ("hf-phi3", "qk.0")])
def test_rotary_and_pass_through_parts_are_read_at_the_projection_output(spec_name, rotary):
    *_, result = _recover(spec_name)
    nodes = result.info["nodes"]
    # each part is one leaf of the nested split, read before RoPE: query (primal) and key (dual) sides
    assert len(nodes[rotary]) == 2 and len(nodes["qkp.0"]) == 2
    assert all("[" in label for label in nodes[rotary] + nodes["qkp.0"])     # parts of a projection's output
    assert "rotary" in result.info["methods"][rotary] and "invertible" not in result.info["methods"][rotary]


def test_gathered_experts_are_read_per_routed_expert_and_the_caller_s_kernel_stays():
    model, resolved, a, b, hidden, result = _recover("hf-mixtral")
    assert experts_implementation(model) != "batched_mm"             # the runner switched its own copy
    assert any("batched_mm" in note for note in result.info["notes"])
    nodes = result.info["nodes"]
    for i in range(2):
        # the router's logits and softmax carry the experts; the gate/up halves and the SwiGLU product
        # carry the units of the expert each row was routed to
        assert len(nodes[f"experts.{i}"]) >= 5 and set(nodes[f"mlp.{i}"]) < set(nodes[f"experts.{i}"])
        assert len(nodes[f"mlp.{i}"]) == 3
        assert nodes[f"kv.{i}"] and nodes[f"qh.{i}"]                  # layer 1's attention is typed too


def test_routing_decides_the_block_of_each_row():
    x = torch.arange(8.0).reshape(4, 2)                               # 4 rows: 2 tokens x 2 choices
    out = scatter_rows(x, torch.tensor([[1, 0], [0, 2]]), 3).reshape(4, 3, 2)
    assert out[0, 1].tolist() == [0.0, 1.0] and out[1, 0].tolist() == [2.0, 3.0] and out[3, 2].tolist() == [6.0, 7.0]
    assert out.abs().sum() == x.abs().sum()                            # nothing else is written
    assert rows_follow((4,), (4, 3, 1), (0, 2)) and rows_follow((4,), (2, 2, 3), (0, 1))
    assert not rows_follow((4,), (2, 2, 3), (0, 2))                   # a feature among the ids' axes
    assert not rows_follow((4,), (3, 4), (1,))                       # the rows must lead


def test_a_nested_split_inside_a_fused_axis_is_read_leaf_by_leaf():
    # Phi-3's qkv_proj output: [(kv g [qk | qkp]) | (kv [qk' | qkp']) | kv ov], kv=2, g=2, qk=2, qkp=1, ov=3
    kv, g, qk, qkp, ov = Atom(2, "kv"), Atom(2, "g"), Atom(2, "qk"), Atom(1, "qkp"), Atom(3, "ov")
    nested = lambda *atoms: SplitAxis(((atoms[0],), (atoms[1],)))    # noqa: E731
    axis = SplitAxis(((kv, g, nested(qk, qkp)), (kv, nested(Atom(2, "qk", True), Atom(1, "qkp", True))), (kv, ov)))
    plans, why = plans_for("qkv", ((Atom(5),), axis), (5, 24), ["kv", "g", "qk", "qkp", "ov"])
    assert why is None
    assert [[(f.site, f.dual) for f in p.features] for p in plans] == [
        [("kv", False), ("g", False), ("qk", False)], [("kv", False), ("g", False), ("qkp", False)],
        [("kv", False), ("qk", True)], [("kv", False), ("qkp", True)], [("kv", False), ("ov", False)]]
    x = torch.arange(24.0).expand(5, 24)
    # (kv g qkp): the third coordinate of each of the 4 query heads of 3; keys start at 12, values at 18
    assert plans[1].extract(x)[0].tolist() == [2.0, 5.0, 8.0, 11.0]
    assert plans[3].extract(x)[0].tolist() == [14.0, 17.0]
    assert plans[4].extract(x)[0].tolist() == list(range(18, 24))
