"""Activation matching: recovery of hidden group elements from activations, valid elements on
unrelated models, node selection on the traced graph, fallbacks, and plugin discovery."""
from __future__ import annotations

import doctest
import importlib

import pytest
import torch

from conftest import SHIPPED, canonical_example, relative_distance
from symdsl.act import act_state_dict, random_transform
from symdsl.models.build import make_inputs
from symdsl.spec import load_spec_text, model_config, resolve
from conftest import REGISTRIES

F64 = torch.float64


def _batches(spec, model, resolved, n=4):
    names = {**model_config(model), **resolved.dims}
    return [make_inputs(spec, names, seed=100 + s) for s in range(n)]


def _assert_recovered(resolved, a, b, hidden, result):
    aligned = act_state_dict(resolved, b, result.elements)
    assert relative_distance(resolved, aligned, a) < 1e-6
    for site, g in result.elements.items():
        info = resolved.sites[site]
        kind = info.kind
        expected = kind.inverse(hidden[site])
        if info.per in resolved.sites:     # y[a] = G[a] x[p[a]] is undone by G[q[a]]^-1 x[q[a]], q = p^-1
            expected = expected[resolved.sites[info.per].kind.inverse(hidden[info.per])]
        if kind.matrix_based:
            assert g.dtype == F64
            torch.testing.assert_close(g, expected, rtol=0, atol=1e-6, msg=site)
        else:
            assert torch.equal(g, expected), site


@pytest.mark.parametrize("name", SHIPPED)
def test_activation_matching_recovers_a_hidden_transform(name):
    spec, model, resolved = canonical_example(name)
    a = {k: v.clone() for k, v in model.state_dict().items()}
    hidden = random_transform(resolved, seed=7)
    b = act_state_dict(resolved, a, hidden)
    assert relative_distance(resolved, b, a) > 0.3
    calls = []
    result = REGISTRIES.matchers.lookup("activation").match(resolved, a, b, model=model, batches=_batches(spec, model, resolved),
                                             progress=lambda *args: calls.append(args))
    _assert_recovered(resolved, a, b, hidden, result)
    assert result.matcher == "activation" and result.info["evaluator"] == ["export"]
    assert result.objective[0] > 0.3 and result.objective[-1] < 1e-9      # activation distance: before, after
    assert not result.info["identity"]                                     # every site was read from activations
    assert calls and calls[-1][1] == calls[-1][2]
    # the nodes read per family: q/k/v (and the attention output) for the heads, pre/post activation for the MLP
    nodes = result.info["nodes"]
    assert len(nodes["mlp.0"]) == 2
    assert len(nodes["heads.0"]) == 4 and len(nodes["qk.0"]) == 2 and len(nodes["ov.0"]) == 2
    assert len(nodes["resid"]) >= 2 * 2 + 1                                # writers and LayerNorm outputs


def test_unrelated_models_give_valid_elements():
    for name in SHIPPED:
        spec, model_a, resolved = canonical_example(name, seed=0)
        _, model_b, _ = canonical_example(name, seed=1)
        a, b = model_a.state_dict(), model_b.state_dict()
        result = REGISTRIES.matchers.lookup("activation").match(resolved, a, b, model=model_a,
                                                 batches=_batches(spec, model_a, resolved, n=3))
        for site, g in result.elements.items():
            info = resolved.sites[site]
            assert info.kind.contains(g, info.options), (name, site)
            assert g.device == a[next(iter(a))].device
        before, after = result.objective
        assert after < before, name             # least squares / Procrustes / assignment bring activations closer
        aligned = act_state_dict(resolved, b, result.elements)
        assert all(torch.isfinite(t).all() for t in aligned.values())


def test_whitened_invertible_fit_recovers_and_does_not_blow_up_weights():
    spec, model, resolved = canonical_example("hf-gpt2")
    a = model.state_dict()
    hidden = random_transform(resolved, seed=3)
    b = act_state_dict(resolved, a, hidden)
    batches = _batches(spec, model, resolved)
    result = REGISTRIES.matchers.lookup("activation").match(resolved, a, b, model=model, batches=batches, invertible="whitened")
    _assert_recovered(resolved, a, b, hidden, result)
    # unrelated models: least squares shrinks ov (no activation sees the output projection's side), whitening does not
    _, other, _ = canonical_example("hf-gpt2", seed=1)
    c = other.state_dict()
    plain = REGISTRIES.matchers.lookup("activation").match(resolved, a, c, model=model, batches=batches, invertible="regression")
    white = REGISTRIES.matchers.lookup("activation").match(resolved, a, c, model=model, batches=batches, invertible="whitened")
    assert (relative_distance(resolved, act_state_dict(resolved, c, white.elements), a)
            < relative_distance(resolved, act_state_dict(resolved, c, plain.elements), a))


def test_module_hook_evaluator_recovers_without_the_attention_op():
    spec, model, resolved = canonical_example("timm-vit")
    a = model.state_dict()
    hidden = random_transform(resolved, seed=5)
    b = act_state_dict(resolved, a, hidden)
    batches = iter(_batches(spec, model, resolved))          # a one-shot iterator works too
    result = REGISTRIES.matchers.lookup("activation").match(resolved, a, b, model=model, batches=batches, evaluator="hooks")
    _assert_recovered(resolved, a, b, hidden, result)
    assert result.info["evaluator"] == ["hooks"]
    assert "scaled_dot_product_attention" not in result.info["nodes"]["heads.0"]
    assert any("not a module output" in note for note in result.info["notes"])


class _Folded(torch.nn.Module):
    """``hidden`` is a real activation; ``inner`` only ever lives inside the weight product b @ a."""

    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(3, 5)
        self.fc2 = torch.nn.Linear(5, 2)
        self.a = torch.nn.Parameter(torch.randn(4, 3))
        self.b = torch.nn.Parameter(torch.randn(2, 4))

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x))) + x @ (self.b @ self.a).T


FOLDED = """
symdsl: 1
name: folded
sites:
  hidden: {group: permutation, size: 5}
  inner: {group: orthogonal, size: 4}
tensors: {fc1.weight: "hidden _", fc1.bias: hidden, fc2.weight: "_ hidden'", a: "inner _", b: "_ inner'"}
invariant: [fc2.bias]
"""


def test_a_site_without_activations_keeps_the_identity_and_says_so():
    torch.manual_seed(0)
    net = _Folded().double()
    resolved = resolve(load_spec_text(FOLDED), net, registries=REGISTRIES)
    a = net.state_dict()
    hidden = random_transform(resolved, seed=2)
    b = act_state_dict(resolved, a, hidden)
    generator = torch.Generator().manual_seed(0)
    batches = ({"x": torch.randn(16, 3, dtype=F64, generator=generator)} for _ in range(10))
    result = REGISTRIES.matchers.lookup("activation").match(resolved, a, b, model=net, batches=batches, max_samples=40)
    assert torch.equal(result.elements["hidden"], resolved.sites["hidden"].kind.inverse(hidden["hidden"]))
    assert torch.equal(result.elements["inner"], torch.eye(4, dtype=F64))
    assert "inner" in result.info["identity"] and result.info["nodes"]["hidden"] == ["linear", "relu"]
    assert result.info["batches"] == 3 and result.info["samples"] == 48      # stopped once 40 samples were seen


def test_discovered_as_a_plugin_and_rejects_bad_calls():
    from symdsl.errors import UsageError

    matcher = REGISTRIES.matchers.lookup("activation")
    assert matcher.name == "activation" and matcher.needs_data
    spec, model, resolved = canonical_example("hf-gpt2")
    state = model.state_dict()
    with pytest.raises(UsageError, match="model="):
        matcher.match(resolved, state, state)
    with pytest.raises(UsageError, match="no option .max_iter."):      # declared options (was a TypeError)
        matcher.match(resolved, state, state, model=model, batches=[], max_iter=3)
    with pytest.raises(UsageError, match="no batch"):
        matcher.match(resolved, state, state, model=model, batches=[])


@pytest.mark.parametrize("module", ["activation", "activation_graph", "activation_run", "activation_stats"])
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(f"symdsl_builtins.matchers.{module}"))
    assert result.failed == 0 and result.attempted > 0
