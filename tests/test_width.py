"""Width lift: a narrow model lifted into a wide configuration computes exactly the narrow function.

References are independent of the lift code: the narrow model's own forward pass (float64), closed
forms for the lifted tensors of the identity embedding, and hidden transforms recovered by matching.
"""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from conftest import build_hf
from symdsl.act import act_state_dict, random_transform
from symdsl.canon import canonicalize
from symdsl.errors import UsageError
from symdsl.models import load_model, save_model
from symdsl.models.build import perturb_parameters
from symdsl.spec import resolve
from symdsl import find_spec
from symdsl import width
from symdsl.api.pipeline import spec_for
from symdsl.api.widths import LIFT_LAM, align_widths
from symdsl.width import needs_lift
from symdsl.width.adapters import get_adapter
from conftest import REGISTRIES


# the core width functions take a Spec and the registries; these find the spec as the API does
def lift(narrow, wide, spec=None, **options):
    return width.lift(narrow, wide, spec_for(spec, wide, REGISTRIES), registries=REGISTRIES, **options)


def site_sizes(model, spec=None):
    return width.site_sizes(model, spec_for(spec, model, REGISTRIES), REGISTRIES)


def wide_and_narrow(a, b, spec=None):
    return width.wide_and_narrow(a, b, spec_for(spec, a, REGISTRIES), REGISTRIES)

F64 = torch.float64
VIT_BASE = dict(img_size=8, patch_size=2, in_chans=1, num_classes=10, embed_dim=32, depth=2, num_heads=4,
                mlp_ratio=2.0)

# (narrow overrides, wide overrides): GPT-2 keys; the ViT cases below mirror them
GPT2_CASES = {
    "wider residual, head dim grows": (dict(n_embd=16, n_head=2), dict(n_embd=32, n_head=2)),
    "more heads, same head dim": (dict(n_embd=16, n_head=2), dict(n_embd=32, n_head=4)),
    "wider MLP only": (dict(n_embd=16, n_head=2, n_inner=32), dict(n_embd=16, n_head=2, n_inner=80)),
    "fewer heads and a smaller head dim": (dict(n_embd=16, n_head=2), dict(n_embd=48, n_head=3)),
}
VIT_CASES = {
    "wider residual, head dim grows": (dict(embed_dim=16, num_heads=2), dict(embed_dim=32, num_heads=2)),
    "more heads, same head dim": (dict(embed_dim=16, num_heads=2), dict(embed_dim=32, num_heads=4)),
    "wider MLP only": (dict(embed_dim=16, num_heads=2, mlp_ratio=2.0), dict(embed_dim=16, num_heads=2, mlp_ratio=5.0)),
    "fewer heads and a smaller head dim": (dict(embed_dim=16, num_heads=2), dict(embed_dim=48, num_heads=3)),
}


def gpt2(seed: int = 0, cls: str = "GPT2LMHeadModel", **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_hf("hf-gpt2", cls, **overrides)
    return perturb_parameters(model, seed=seed).double().eval()


def vit(seed: int = 0, **overrides) -> torch.nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    config = {**VIT_BASE, **overrides}
    torch.manual_seed(seed)
    model = VisionTransformer(**config)
    model.symdsl_config = config
    return perturb_parameters(model, seed=seed).double().eval()


def gpt2_inputs(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 64, (3, 12), generator=torch.Generator().manual_seed(seed))


def vit_inputs(seed: int = 0) -> torch.Tensor:
    return torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=F64)


def run(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=x) if not x.is_floating_point() else model(x)
    return out.logits if hasattr(out, "logits") else out


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# --------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("embedding", ["identity", "random"])
@pytest.mark.parametrize("case", list(GPT2_CASES))
def test_gpt2_lift_computes_the_narrow_function(case, embedding):
    narrow_cfg, wide_cfg = GPT2_CASES[case]
    narrow, wide = gpt2(0, **narrow_cfg), gpt2(1, **wide_cfg)
    lifted = lift(narrow, wide, embedding=embedding, seed=4)
    assert type(lifted.model) is type(wide)
    for key, value in wide_cfg.items():
        assert getattr(lifted.model.config, key) == value
    x = gpt2_inputs()
    assert relative_error(run(lifted.model, x), run(narrow, x)) < 1e-12
    assert relative_error(run(wide, x), run(narrow, x)) > 1e-2          # the wide weights were not used


@pytest.mark.parametrize("embedding", ["identity", "random"])
@pytest.mark.parametrize("case", list(VIT_CASES))
def test_vit_lift_computes_the_narrow_function(case, embedding):
    narrow_cfg, wide_cfg = VIT_CASES[case]
    narrow, wide = vit(0, **narrow_cfg), vit(1, **wide_cfg)
    lifted = lift(narrow, wide, embedding=embedding, seed=4)
    assert type(lifted.model).__name__ == "VisionTransformer"
    assert lifted.model.symdsl_config == wide.symdsl_config
    x = vit_inputs()
    assert relative_error(run(lifted.model, x), run(narrow, x)) < 1e-12


def test_sequence_classifier_and_layer_scaled_attention_lift_exactly():
    narrow = gpt2(0, "GPT2ForSequenceClassification", n_embd=16, n_head=2, num_labels=3, pad_token_id=0,
                  scale_attn_by_inverse_layer_idx=True)
    wide = gpt2(1, "GPT2ForSequenceClassification", n_embd=32, n_head=4, num_labels=3, pad_token_id=0,
                scale_attn_by_inverse_layer_idx=True)
    lifted = lift(narrow, wide, embedding="random")
    x = gpt2_inputs() + 1      # no pad token: every sequence is read to its end
    assert relative_error(run(lifted.model, x), run(narrow, x)) < 1e-12


def test_lifted_models_are_standard_checkpoints(tmp_path):
    pairs = [(gpt2(0, n_embd=16, n_head=2), gpt2(1, n_embd=32, n_head=4), gpt2_inputs()),
             (vit(0, embed_dim=16, num_heads=2), vit(1, embed_dim=32, num_heads=4), vit_inputs())]
    for index, (narrow, wide, x) in enumerate(pairs):
        lifted = lift(narrow, wide)
        folder = save_model(lifted.model, tmp_path / str(index))
        reloaded = load_model(str(folder))
        assert type(reloaded) is type(wide)
        state = reloaded.state_dict()        # loaded into the class's default dtype (float32)
        for name, tensor in lifted.state.items():
            assert torch.equal(state[name], tensor.to(state[name].dtype)), name
        assert relative_error(run(reloaded.double(), x), run(narrow, x)) < 1e-6


# --------------------------------------------------------------------------- closed forms


def _canonical(model):
    spec = find_spec("hf-gpt2")
    model = copy.deepcopy(model)
    canonicalize(model, resolve(spec, model, registries=REGISTRIES))
    return model.state_dict()


def test_identity_lift_of_gpt2_matches_the_closed_form():
    narrow, wide = gpt2(0, n_embd=16, n_head=2), gpt2(1, n_embd=32, n_head=2)
    lifted = lift(narrow, wide)
    n, w = _canonical(narrow), lifted.state
    s = math.sqrt(32 / 16)       # residual scale
    c = math.sqrt(16 / 8)        # query temperature: head dim 8 -> 16
    assert lifted.residual_scale == pytest.approx(s, rel=1e-15)
    assert lifted.sites["qk.0"].scale == pytest.approx(c, rel=1e-15)
    # writers: s E, i.e. the narrow coordinates scaled by s, then zeros
    torch.testing.assert_close(w["transformer.wte.weight"][:, :16], s * n["transformer.wte.weight"], rtol=1e-15, atol=0)
    assert not w["transformer.wte.weight"][:, 16:].any()
    # readers: E / s; folded gains become ones, norm biases s E
    torch.testing.assert_close(w["lm_head.weight"][:, :16], n["lm_head.weight"] / s, rtol=1e-15, atol=0)
    assert not w["lm_head.weight"][:, 16:].any()
    assert torch.equal(w["transformer.h.0.ln_1.weight"], torch.ones(32, dtype=F64))
    torch.testing.assert_close(w["transformer.h.0.ln_1.bias"][:16], s * n["transformer.h.0.ln_1.bias"], rtol=1e-15, atol=0)
    # attention: Conv1D (in, out); out = q | k | v, each (heads, head_dim)
    qkv_n = n["transformer.h.0.attn.c_attn.weight"].reshape(16, 3, 2, 8)
    qkv_w = w["transformer.h.0.attn.c_attn.weight"].reshape(32, 3, 2, 16)
    for part, factor in ((0, c / s), (1, 1 / s), (2, 1 / s)):
        torch.testing.assert_close(qkv_w[:16, part, :, :8], factor * qkv_n[:, part], rtol=1e-14, atol=0)
        assert not qkv_w[16:, part].any() and not qkv_w[:, part, :, 8:].any()


def test_mlp_copies_divide_the_reader_by_the_copy_count():
    narrow, wide = gpt2(0, n_embd=16, n_head=2, n_inner=32), gpt2(1, n_embd=16, n_head=2, n_inner=80)
    lifted = lift(narrow, wide)
    n, w = _canonical(narrow), lifted.state
    units = torch.arange(80) % 32                       # the identity copy map
    counts = torch.bincount(units, minlength=32).to(F64)
    assert counts[:16].tolist() == [3.0] * 16 and counts[16:].tolist() == [2.0] * 16
    assert lifted.sites["mlp.0"].copies.tolist() == units.tolist()
    torch.testing.assert_close(w["transformer.h.0.mlp.c_fc.weight"], n["transformer.h.0.mlp.c_fc.weight"][:, units],
                               rtol=0, atol=0)
    torch.testing.assert_close(w["transformer.h.0.mlp.c_proj.weight"],
                               n["transformer.h.0.mlp.c_proj.weight"][units] / counts[units, None], rtol=1e-15, atol=0)


def test_the_temperature_correction_is_needed():
    narrow, wide = vit(0, embed_dim=16, num_heads=2), vit(1, embed_dim=32, num_heads=2)
    lifted = lift(narrow, wide)
    x = vit_inputs()
    c = lifted.sites["qk.0"].scale
    assert c == pytest.approx(math.sqrt(2), rel=1e-15)
    broken = copy.deepcopy(lifted.model)
    with torch.no_grad():
        for block in broken.blocks:
            block.attn.qkv.weight[:32] /= c          # queries are the first 32 rows of the fused (3d, d) weight
            block.attn.qkv.bias[:32] /= c
    assert relative_error(run(broken, x), run(narrow, x)) > 1e-3
    assert relative_error(run(lifted.model, x), run(narrow, x)) < 1e-12


# --------------------------------------------------------------------------- refusals


def test_narrow_must_not_be_wider_anywhere():
    narrow, wide = gpt2(0, n_embd=32, n_head=4), gpt2(1, n_embd=16, n_head=2)
    with pytest.raises(UsageError, match="swap"):
        lift(narrow, wide)


def test_a_head_dim_that_cannot_be_embedded_is_refused():
    narrow, wide = vit(0, embed_dim=32, num_heads=1), vit(1, embed_dim=64, num_heads=4)   # head dim 32 > 16
    with pytest.raises(UsageError, match="qk.0"):
        lift(narrow, wide)


def test_models_of_different_classes_or_depths_are_refused():
    with pytest.raises(UsageError, match="one class"):
        lift(gpt2(0, n_embd=16, n_head=2), vit(1))
    with pytest.raises(UsageError, match="different sites|different modules|differ at 'n_layer'"):
        lift(gpt2(0, n_embd=16, n_head=2, n_layer=1), gpt2(1, n_embd=32, n_head=2))


def test_configurations_may_differ_only_in_width():
    with pytest.raises(UsageError, match="layer_norm_epsilon"):
        lift(gpt2(0, n_embd=16, n_head=2, layer_norm_epsilon=1e-3), gpt2(1, n_embd=32, n_head=2))
    with pytest.raises(UsageError, match="vocab_size"):
        lift(gpt2(0, n_embd=16, n_head=2, vocab_size=50), gpt2(1, n_embd=32, n_head=2))


def test_an_unbound_axis_of_another_size_is_refused():
    narrow, wide = vit(0, embed_dim=16, num_heads=2), vit(1, embed_dim=32, num_heads=2)
    del narrow.symdsl_config, wide.symdsl_config        # no configs to compare: the bindings must catch it
    wide.head = torch.nn.Linear(32, 7).double()         # 7 classes, not 10
    with pytest.raises(UsageError, match="head.weight"):
        lift(narrow, wide)


def test_architectures_without_a_lift_rule_fail_closed():
    bert_spec = find_spec("hf-bert")
    narrow, wide = build_hf("hf-bert", "BertModel", hidden_size=16, num_attention_heads=2, intermediate_size=32), \
        build_hf("hf-bert", "BertModel")
    with pytest.raises(UsageError, match="no width-lift rule for spec 'hf-bert'"):
        lift(narrow, wide, bert_spec)
    with pytest.raises(UsageError, match="register_adapter"):
        get_adapter("my-arch")


def test_attention_variants_the_rule_does_not_know_are_refused():
    narrow, wide = vit(0, embed_dim=16, num_heads=2), vit(1, embed_dim=32, num_heads=2)
    narrow.blocks[1].attn.scale = 0.5                   # timm's fused path would ignore it: no rule
    with pytest.raises(UsageError, match="custom scale"):
        lift(narrow, wide)
    narrow, wide = gpt2(0, n_embd=16, n_head=2), gpt2(1, n_embd=32, n_head=2)
    narrow.transformer.h[0].attn.scaling = 0.3          # not what GPT-2's config says it computes
    with pytest.raises(UsageError, match="h.0.attn"):
        lift(narrow, wide)


def test_embedding_choice_is_checked():
    with pytest.raises(UsageError, match="embedding"):
        lift(vit(0, embed_dim=16, num_heads=2), vit(1), embedding="zeros")


# --------------------------------------------------------------------------- helpers for the pipeline


def test_needs_lift_and_which_is_wide():
    small, big = vit(0, embed_dim=16, num_heads=2), vit(1, embed_dim=32, num_heads=4)
    assert needs_lift(small, big) and not needs_lift(small, vit(2, embed_dim=16, num_heads=2))
    assert not needs_lift(small, gpt2(0))
    assert wide_and_narrow(small, big) == (big, small, True)
    assert wide_and_narrow(big, small) == (big, small, False)
    assert site_sizes(big)["heads.0"] == 4
    odd = vit(3, embed_dim=32, num_heads=1)             # wider residual than `small`, but fewer heads
    with pytest.raises(UsageError, match="neither model is narrower"):
        wide_and_narrow(small, odd)


@pytest.mark.parametrize("family", ["vit", "gpt2"])
def test_matching_in_the_wide_space_recovers_a_hidden_transform(family):
    if family == "vit":
        narrow, template = vit(0, embed_dim=16, num_heads=2), vit(1, embed_dim=32, num_heads=4)
    else:
        narrow, template = gpt2(0, n_embd=16, n_head=2), gpt2(1, n_embd=32, n_head=4)
    lifted = lift(narrow, template)
    resolved = resolve(lifted.spec, lifted.model, registries=REGISTRIES)
    wide = copy.deepcopy(lifted.model)     # the wide model: the lifted one moved by a hidden symmetry
    wide.load_state_dict(act_state_dict(resolved, lifted.state, random_transform(resolved, seed=5)))

    def distance(x, y):
        num = sum(float(((x[n] - y[n]) ** 2).sum()) for n in resolved.tensors)
        return (num / sum(float((y[n] ** 2).sum()) for n in resolved.tensors)) ** 0.5

    result = align_widths(wide, narrow)
    assert distance(result.lifted_state, result.wide_state) > 0.3
    assert distance(result.aligned, result.wide_state) < 1e-8


def test_learned_matching_of_a_lifted_pair_leans_toward_the_narrow_model():
    narrow, wide = vit(0, embed_dim=16, num_heads=2), vit(1, embed_dim=32, num_heads=4)
    result = align_widths(wide, narrow, matcher="learned", data="digits", steps=2, eval_every=1,
                          init={"max_iter": 1, "invertible_steps": 0})
    assert LIFT_LAM == "uniform:0.2,0.5" and result.result.info["lam"] == LIFT_LAM
    chosen = align_widths(wide, narrow, matcher="learned", data="digits", steps=1, lam="uniform:0.4,0.6",
                          init={"max_iter": 1, "invertible_steps": 0})
    assert chosen.result.info["lam"] == "uniform:0.4,0.6"


def test_curves_run_from_the_lifted_narrow_model_to_the_wide_one():
    from symdsl.evaluate import evaluate

    narrow, wide = vit(0, embed_dim=16, num_heads=2), vit(1, embed_dim=32, num_heads=4)
    result = align_widths(wide, narrow, max_iter=1, invertible_steps=0)
    curves = result.curves("digits", points=3)
    assert set(curves) == {"vanilla", "weight"}
    narrow_loss, wide_loss = evaluate(narrow, "digits")["loss"], evaluate(wide, "digits")["loss"]
    for curve in curves.values():
        assert curve.at(0.0)[0] == pytest.approx(narrow_loss, rel=1e-9)    # lam 0: the lifted narrow model
        assert curve.at(1.0)[0] == pytest.approx(wide_loss, rel=1e-9)      # lam 1: the wide model
    record = json.loads(json.dumps(result.to_record()))          # JSON-serialisable for symdsl.json
    assert record["lift"]["sites"]["resid"]["scale"] == pytest.approx(math.sqrt(2))
    assert record["lift"]["sites"]["heads.0"]["copies"] == [0, 1, 0, 1]


def test_weight_matching_survives_a_head_dim_that_grows():
    # The lifted heads are rank-deficient in the wide head dim, so a closed-form candidate for the
    # per-head maps is singular: weight matching must reject it, not fail.
    from symdsl.data import load_dataset
    from symdsl.experiments.train import small_vit
    from symdsl.api.widths import align_widths

    ds = load_dataset("digits")
    wide, narrow = small_vit(ds, embed_dim=32, num_heads=2, seed=1), small_vit(ds, embed_dim=16, num_heads=2, seed=0)
    result = align_widths(wide, narrow, max_iter=2)
    assert result.result.objective[-1] <= result.result.objective[0]
