"""benchmarks/wm_reference.py, the paper's weight matching written from its description: its LayerNorm ->
RMSNorm conversion keeps the function, its group action keeps the function, and on a tiny pair with
a hidden element (residual rotation, MLP and head permutations, per-head maps) it recovers it."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from symdsl.data import text_dataset
from symdsl.experiments.train import small_gpt2
from symdsl.models.build import perturb_parameters

ROOT = Path(__file__).resolve().parents[1]
TEXT = "the quick brown fox jumps over a lazy dog; to be or not to be, that is it. " * 12


def _script():
    spec = importlib.util.spec_from_file_location("wm_reference", ROOT / "benchmarks" / "wm_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ref():
    return _script()


@pytest.fixture(scope="module")
def setting():
    dataset = text_dataset(TEXT, block_size=16)
    model = perturb_parameters(small_gpt2(dataset, n_embd=32, n_layer=2, n_head=4, seed=0), seed=0).double().eval()
    ids = torch.randint(0, dataset.vocab_size, (3, 16), generator=torch.Generator().manual_seed(0))
    return dataset, model, ids


def _hidden(ref, state, n_head, seed=5):
    """A random element: orthogonal Q, MLP and head permutations, orthogonal per-head maps."""
    g = torch.Generator().manual_seed(seed)
    e = ref.identity_elements(state, n_head)
    for key, value in e.items():
        if key == "Q" or key.startswith(("qk", "ov")):
            e[key] = torch.linalg.qr(torch.randn(value.shape, generator=g, dtype=torch.float64))[0]
        else:
            e[key] = torch.randperm(value.numel(), generator=g)
    return e


def test_the_rmsnorm_form_computes_what_the_gpt2_computes(ref, setting):
    _, model, ids = setting
    converted = ref.RMSGPT(ref.to_rms(model), n_head=4, eps=model.config.layer_norm_epsilon)
    with torch.no_grad():
        expected, got = model(input_ids=ids).logits, converted(ids)
    assert float((got - expected).abs().max() / expected.abs().max()) < 1e-12


def test_the_reference_group_action_keeps_the_function(ref, setting):
    _, model, ids = setting
    a = ref.to_rms(model)
    b = ref.apply(a, _hidden(ref, a, 4), 4)
    assert ref.weighted_distance(a, b) > 0.5
    with torch.no_grad():
        assert torch.allclose(ref.RMSGPT(b, 4)(ids), ref.RMSGPT(a, 4)(ids), rtol=0, atol=1e-10)


@pytest.mark.parametrize("weighted", [False, True])
def test_the_reference_recovers_a_hidden_element(ref, setting, weighted):
    dataset, model, _ = setting
    a = ref.to_rms(model)
    b = ref.apply(a, _hidden(ref, a, 4), 4)
    weights = ref.frequency_weights(dataset) if weighted else None
    elements, history = ref.reference_match(a, b, 4, weights)
    assert len(history) == ref.ITERATIONS
    assert ref.weighted_distance(a, ref.apply(b, elements, 4)) < 1e-6
