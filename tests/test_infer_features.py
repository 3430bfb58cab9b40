"""`symdsl infer` on models that return features (backbones, encoder towers): the returned hidden
states may carry the residual site, declared equivariant under `outputs:`, as the shipped
backbone specs do; logits and unnamed outputs stay fixed. Every draft passes its own checks."""
from __future__ import annotations

import pytest
import torch
import transformers

import symdsl
from conftest import REGISTRIES
from symdsl.infer import check_draft

SMALL = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4)


def _sites(draft) -> dict:
    return {s.key: (s.group, s.per) for s in draft.sites}


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def test_bert_model_gets_its_residual_and_pooler_sites_with_the_outputs_declared():
    config = transformers.BertConfig(vocab_size=64, max_position_embeddings=16, **SMALL)
    draft = symdsl.infer(_perturbed(transformers.BertModel(config)), registries=REGISTRIES)
    sites = _sites(draft)
    # post-LN: the LayerNorm gains stay on the stream (a permutation), as in the shipped hf-bert
    assert sites["resid"] == ("permutation", None) and sites["pooler"] == ("permutation", None)
    assert draft.outputs[0][:2] == ("last_hidden_state", "_ _ resid")
    assert draft.outputs[1][:2] == ("pooler_output", "_ pooler")
    shipped = symdsl.find_spec("hf-bert").document
    assert dict(shipped.outputs) == {"last_hidden_state": "_ _ resid"}      # the draft matches the spec
    assert "outputs:" in draft.text and not draft.notes
    assert check_draft(draft.text, registries=REGISTRIES).ok


def test_a_llama_backbone_keeps_a_permutation_residual_because_its_final_norm_is_returned():
    config = transformers.LlamaConfig(num_key_value_heads=2, vocab_size=64, **SMALL)
    draft = symdsl.infer(_perturbed(transformers.LlamaModel(config)), registries=REGISTRIES)
    sites = _sites(draft)
    shipped = {key: (s.group, s.per) for key, s in symdsl.find_spec("hf-llama").document.sites.items()}
    assert sites == {**shipped, "resid": ("permutation", None)}     # everything inside the layers as in the LM
    assert [(name, pattern) for name, pattern, _ in draft.outputs] == [("last_hidden_state", "_ _ resid")]
    assert check_draft(draft.text, registries=REGISTRIES, tolerance=1e-5).ok


@pytest.mark.parametrize("tower, config", [
    (transformers.CLIPTextModel, transformers.CLIPTextConfig(vocab_size=64, max_position_embeddings=16,
                                                             bos_token_id=0, eos_token_id=1, **SMALL)),
    (transformers.CLIPVisionModel, transformers.CLIPVisionConfig(image_size=16, patch_size=8, **SMALL)),
])
def test_clip_towers_get_a_residual_site_and_their_pooled_output_declared(tower, config):
    draft = symdsl.infer(_perturbed(tower(config)), registries=REGISTRIES)
    assert _sites(draft)["resid"] == ("permutation", None)
    outputs = {name: pattern for name, pattern, _ in draft.outputs}
    assert outputs == {"last_hidden_state": "_ _ resid", "pooler_output": "_ resid"}
    assert not draft.notes          # the text tower's pooled token (hidden[arange(B), eos]) is followed
    assert check_draft(draft.text, registries=REGISTRIES).ok


def test_logits_and_unnamed_outputs_stay_fixed():
    config = transformers.LlamaConfig(num_key_value_heads=2, vocab_size=64, **SMALL)
    lm = symdsl.infer(transformers.LlamaForCausalLM(config).eval(), registries=REGISTRIES)
    assert not lm.outputs and "outputs:" not in lm.text
    plain = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    draft = symdsl.infer(plain, factory="mymodels:mlp", registries=REGISTRIES)
    assert not draft.outputs and ("2.bias", "axis 0: returned by the model") in draft.invariant


def test_clip_model_claims_the_similarity_logits_and_moves_the_joint_embedding():
    towers = dict(text_config=dict(vocab_size=64, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, **SMALL),
                  vision_config=dict(image_size=16, patch_size=8, **SMALL))
    model = _perturbed(transformers.CLIPModel(transformers.CLIPConfig(projection_dim=24, **towers)))
    draft = symdsl.infer(model, registries=REGISTRIES)
    # the logits are the claim; the towers' nested outputs (text_model_output...) are none
    assert draft.example["output"] == "logits_per_image" and "output: logits_per_image" in draft.text
    assert set(draft.example["inputs"]) == {"input_ids", "pixel_values"}
    tensors = {name: pattern for name, pattern, _ in draft.tensors}
    sites = {s.key: s for s in draft.sites}
    # text: pre-LN with its final norm read by the projection (through the pooled-token gather):
    # a rotation fixing the ones vector; vision: pre_layrnorm writes the stream, so a permutation
    text_site = sites[tensors["text_model.embeddings.token_embedding.weight"].split()[1]]
    vision_site = sites[tensors["vision_model.embeddings.class_embedding"]]
    assert (text_site.group, text_site.preserve) == ("orthogonal", "ones")
    assert vision_site.group == "permutation"
    joint = tensors["text_projection.weight"].split()[0]
    assert tensors["visual_projection.weight"].split()[0] == joint and sites[joint].group == "orthogonal"
    assert {name: pattern for name, pattern, _ in draft.outputs} == {"text_embeds": f"_ {joint}",
                                                                    "image_embeds": f"_ {joint}"}
    assert check_draft(draft.text, registries=REGISTRIES, tolerance=1e-6).ok


def test_t5_is_traced_without_config_edits_and_gets_one_rotation_for_both_stacks():
    config = transformers.T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2,
                                   num_heads=4, decoder_start_token_id=0)
    draft = symdsl.infer(_perturbed(transformers.T5ForConditionalGeneration(config)), registries=REGISTRIES)
    # encoder and decoder inputs guessed; the KV cache (kept in the decoder stack's own config) is off
    assert set(draft.example["inputs"]) == {"input_ids", "decoder_input_ids"}
    # the logits are the claim; encoder_last_hidden_state is an intermediate state
    assert draft.example["output"] == "logits" and not draft.outputs
    sites = _sites(draft)
    # T5's norm is an RMSNorm: the stream shared by both stacks (tied embeddings) takes any rotation
    assert sites["resid"] == ("orthogonal", None)
    steps = [step for step, _ in draft.canonicalize]
    assert {"untie": ["lm_head.weight", "shared.weight"]} in steps       # lm_head reads decoder.final_layer_norm
    assert ["shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight"] in draft.tied
    # the relative position bias of block 0 is reused by every block: one head permutation per stack
    tensors = {name: pattern for name, pattern, _ in draft.tensors}
    heads = tensors["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].split()[1]
    assert tensors["encoder.block.1.layer.0.SelfAttention.q.weight"].startswith(f"({heads} ")
    assert not draft.notes
    assert check_draft(draft.text, registries=REGISTRIES).ok
