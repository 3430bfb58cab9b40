"""Canonicalizers: each preserves the function (float64) and leaves a standard checkpoint."""
from __future__ import annotations

import copy

import pytest
import torch

from conftest import build_hf
from symdsl.canon import canonicalize
from symdsl.errors import BindError
from symdsl.models import build_example
from symdsl.spec import load_spec_text, resolve
from symdsl import find_spec
from conftest import REGISTRIES

TINY_SPEC = """
symdsl: 1
name: ln-linear
dims: {d: 6}
sites: {resid: {group: orthogonal, size: d, preserve: ones}}
canonicalize:
  - fold_layernorm: {norm: "0", readers: [1.weight]}
  - center_writers: {site: resid, writers: [1.bias]}
tensors:
  0.weight: resid
  0.bias: resid
  1.weight: "_ resid'"
invariant: [1.bias]
"""


def _ln_linear():
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.LayerNorm(6), torch.nn.Linear(6, 3)).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.rand(6, dtype=torch.float64) + 0.5)
        net[0].bias.normal_()
    return net


def test_fold_layernorm_matches_closed_form():
    net = _ln_linear()
    gamma, beta, weight = net[0].weight.clone(), net[0].bias.clone(), net[1].weight.clone()
    spec = load_spec_text(TINY_SPEC.replace("  - center_writers: {site: resid, writers: [1.bias]}\n", ""), trust_code=True)
    resolved = resolve(spec, net, registries=REGISTRIES)
    x = torch.randn(5, 6, dtype=torch.float64)
    before = net(x)
    canonicalize(net, resolved)
    # independent reference: W' = W diag(gamma), gain 1, bias beta / gamma
    torch.testing.assert_close(net[1].weight, weight * gamma, rtol=0, atol=1e-15)
    torch.testing.assert_close(net[0].weight, torch.ones(6, dtype=torch.float64), rtol=0, atol=0)
    torch.testing.assert_close(net[0].bias, beta / gamma, rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(net(x), before, rtol=1e-12, atol=1e-12)


def test_fold_layernorm_refuses_a_zero_gain():
    net = _ln_linear()
    with torch.no_grad():
        net[0].weight[2] = 0.0
    spec = load_spec_text(TINY_SPEC.replace("  - center_writers: {site: resid, writers: [1.bias]}\n", ""), trust_code=True)
    with pytest.raises(BindError, match=r"'0.weight' has zero gain at \[2\]"):
        canonicalize(net, resolve(spec, net, registries=REGISTRIES))


def test_center_writers_removes_the_mean_of_gpt2_writers_and_keeps_logits():
    spec = find_spec("hf-gpt2")
    model = build_example(spec).double()
    resolved = resolve(spec, model, registries=REGISTRIES)
    ids = torch.randint(0, 64, (2, 8))
    before = model(input_ids=ids).logits
    canonicalize(model, resolved)
    writers = [a for s in resolved.canonicalize if s.name == "center_writers" for a in s.args.writers]
    assert "transformer.wte.weight" in writers and len(writers) == 2 + 4 * 2
    for name in writers:
        tensor = model.get_parameter(name)
        axis = -1 if tensor.ndim == 2 else 0
        assert tensor.mean(dim=axis).abs().max() < 1e-15, name
    torch.testing.assert_close(model(input_ids=ids).logits, before, rtol=1e-12, atol=1e-12)


def test_untie_gives_lm_head_its_own_copy():
    spec = find_spec("hf-gpt2")
    model = build_example(spec).double()
    assert model.lm_head.weight is model.transformer.wte.weight
    REGISTRIES.canonicalizers.lookup("untie").apply(model, REGISTRIES.canonicalizers.lookup("untie").prepare(
        ["lm_head.weight", "transformer.wte.weight"], ""), resolve(spec, model, registries=REGISTRIES))
    assert model.lm_head.weight is not model.transformer.wte.weight
    torch.testing.assert_close(model.lm_head.weight, model.transformer.wte.weight, rtol=0, atol=0)
    assert model.config.tie_word_embeddings is False


def test_canonical_gpt2_is_a_standard_checkpoint(tmp_path):
    import transformers

    spec = find_spec("hf-gpt2")
    model = build_example(spec).double()
    canonicalize(model, resolve(spec, model, registries=REGISTRIES))
    ids = torch.randint(0, 64, (2, 8))
    expected = model(input_ids=ids).logits
    model.save_pretrained(tmp_path)
    loaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).double().eval()
    assert loaded.lm_head.weight is not loaded.transformer.wte.weight
    torch.testing.assert_close(loaded(input_ids=ids).logits, expected, rtol=1e-12, atol=1e-12)
    assert torch.all(loaded.transformer.ln_f.weight == 1)


def test_canonical_bert_round_trips(tmp_path):
    import transformers

    model = build_hf("hf-bert", "BertForMaskedLM").double()
    canonicalize(model, resolve(find_spec("hf-bert"), model, registries=REGISTRIES))
    ids = torch.randint(0, 64, (2, 8))
    expected = model(input_ids=ids).logits
    model.save_pretrained(tmp_path)
    loaded = transformers.BertForMaskedLM.from_pretrained(tmp_path).double().eval()
    torch.testing.assert_close(loaded(input_ids=ids).logits, expected, rtol=1e-12, atol=1e-12)


def test_canonical_vit_round_trips_through_torch_save(tmp_path):
    import timm

    spec = find_spec("timm-vit")
    model = build_example(spec).double()
    canonicalize(model, resolve(spec, model, registries=REGISTRIES))
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    expected = model(x)
    torch.save(model.state_dict(), tmp_path / "vit.pt")
    fresh = timm.models.vision_transformer.VisionTransformer(**spec.document.example.config).double().eval()
    fresh.load_state_dict(torch.load(tmp_path / "vit.pt", weights_only=True))
    torch.testing.assert_close(fresh(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["hf-gpt2", "timm-vit", "hf-bert"])
def test_canonicalization_is_idempotent(name):
    spec = find_spec(name)
    model = build_example(spec).double()
    resolved = resolve(spec, model, registries=REGISTRIES)
    canonicalize(model, resolved)
    once = copy.deepcopy(model.state_dict())
    canonicalize(model, resolved)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, once[key], rtol=1e-13, atol=1e-15)


def test_rmsnorm_gain_folds_unbound_and_the_residual_admits_every_rotation():
    from symdsl.check import numeric_check

    spec = load_spec_text("""
symdsl: 1
name: rms
example: {factory: "test_canonicalizers:rms_net", inputs: {input: {randn: true, shape: [5, 4]}}}
sites: {resid: {group: orthogonal, size: 6}}
canonicalize:
  - fold_layernorm: {norm: "1", readers: [2.weight]}
tensors: {0.weight: "resid _", 0.bias: resid, 2.weight: "_ resid'"}
invariant: [1.weight, 2.bias]
""", "rms.yaml", trust_code=True)
    report = numeric_check(spec, registries=REGISTRIES)
    assert report.ok and report.canonicalize_error < 1e-12


def rms_net():
    return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.RMSNorm(6), torch.nn.Linear(6, 3))
