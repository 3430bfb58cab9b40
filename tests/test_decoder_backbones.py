"""The bare decoder backbones (LlamaModel, MistralModel, Qwen2Model, Qwen3Model, GemmaModel, Gemma2Model,
Phi3Model, GPTNeoXModel, GPTJModel, OPTModel pre- and post-LN, MixtralModel), one hf-<family>-backbone
spec each: the final norm's output is returned, its gain has no reader to be folded into, so the
residual stream admits only permutations (every norm gain bound to it) and last_hidden_state is
declared equivariant. Each backbone is matched by its spec (its ForCausalLM class still by the
family's own), passes both checks in float64 and from a save_pretrained folder, and weight matching
recovers a hidden element; a rotation of the stream fails at the final norm and nowhere else."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import symdsl
from conftest import REGISTRIES
from decoder_families import hidden_element_distances, tiny
from symdsl.check.numeric import numeric_check
from symdsl.check.static import static_check
from symdsl.errors import SymdslError
from symdsl.models.kernels import use_exact_kernels
from symdsl.spec import resolve
from test_gemma import CONFIG as GEMMA, GEMMA2
from test_gptj import CONFIG as GPTJ
from test_llama import CONFIG as LLAMA
from test_mixtral import CONFIG as MIXTRAL
from test_neox import CONFIG as NEOX
from test_opt import CONFIG as OPT, POST_LN
from test_phi3 import CONFIG as PHI3
from test_qwen3 import CONFIG as QWEN3

# backbone spec -> (backbone class, its ForCausalLM class, the family's spec for that class, tiny config)
FAMILIES = {
    "hf-llama-backbone": ("LlamaModel", "LlamaForCausalLM", "hf-llama", LLAMA),
    "hf-llama-backbone/mistral": ("MistralModel", "MistralForCausalLM", "hf-llama", LLAMA),
    "hf-qwen2-backbone": ("Qwen2Model", "Qwen2ForCausalLM", "hf-qwen2", LLAMA),
    "hf-qwen3-backbone": ("Qwen3Model", "Qwen3ForCausalLM", "hf-qwen3", QWEN3),
    "hf-gemma-backbone": ("GemmaModel", "GemmaForCausalLM", "hf-gemma", GEMMA),
    "hf-gemma2-backbone": ("Gemma2Model", "Gemma2ForCausalLM", "hf-gemma2", {**GEMMA, **GEMMA2}),
    "hf-phi3-backbone": ("Phi3Model", "Phi3ForCausalLM", "hf-phi3", PHI3),
    "hf-gpt-neox-backbone": ("GPTNeoXModel", "GPTNeoXForCausalLM", "hf-gpt-neox", NEOX),
    "hf-gptj-backbone": ("GPTJModel", "GPTJForCausalLM", "hf-gptj", GPTJ),
    "hf-opt-backbone": ("OPTModel", "OPTForCausalLM", "hf-opt", OPT),
    "hf-opt-postln-backbone": ("OPTModel", "OPTForCausalLM", "hf-opt-postln", {**OPT, **POST_LN}),
    "hf-mixtral-backbone": ("MixtralModel", "MixtralForCausalLM", "hf-mixtral", MIXTRAL),
}
IDS = torch.randint(2, 64, (2, 8), generator=torch.Generator().manual_seed(0))     # above OPT's pad id 1


def spec_name(case: str) -> str:
    return case.split("/")[0]


def backbone(case: str, seed: int = 0, causal: bool = False) -> torch.nn.Module:
    """A tiny backbone (or its ForCausalLM class) of the family, every parameter perturbed; Gemma's
    stored norm offsets spread as in test_gemma.py (gains 1 + w in [0.4, 1.6])."""
    backbone_cls, causal_cls, _, config = FAMILIES[case]
    model = tiny(causal_cls if causal else backbone_cls, config, seed)
    if "gemma" in case:
        generator = torch.Generator().manual_seed(100 + seed)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name.endswith("norm.weight"):
                    parameter.copy_(torch.empty(parameter.shape).uniform_(-0.6, 0.6, generator=generator))
    return model


def resid_output_site(case: str) -> str:
    return "wemb" if case == "hf-opt-postln-backbone" else "resid"


@pytest.mark.parametrize("case", FAMILIES)
def test_the_backbone_matches_its_spec_and_both_checks_pass(case):
    model = backbone(case)
    spec = symdsl.find_spec(spec_name(case))
    assert symdsl.api.pipeline.spec_for(None, model, REGISTRIES).name == spec_name(case)
    resolved = resolve(spec, model, registries=REGISTRIES)
    assert resolved.sites["resid"].kind.name == "permutation"
    # every norm gain on the stream is bound to it: nothing is folded, nothing left unit
    gains = [n for n in model.state_dict() if ("norm" in n or ".ln_" in n or n.startswith("ln_")) and n.endswith(".weight")
             and "q_norm" not in n and "k_norm" not in n]
    assert gains and all([f.site for part in resolved.tensors[n].axes[0].parts for f in part] == ["resid"] for n in gains), gains
    assert spec.document.canonicalize == []
    report = numeric_check(spec, model, registries=REGISTRIES)
    assert report.ok, report.failed
    assert max(s.relative_error for s in report.sites) < 1e-6 and report.canonicalize_error == 0
    assert {"resid", "*"} <= {s.site for s in report.sites}
    static = static_check(spec, backbone(case), registries=REGISTRIES)
    assert static.ok, [str(f) for f in static.findings]
    assert static.unused_tensors == []


@pytest.mark.parametrize("name", sorted({spec_name(case) for case in FAMILIES}))
def test_the_spec_s_own_example_builds_binds_and_is_matched(name):
    # what 'symdsl check NAME' builds when no model is given
    from symdsl.models import build_example

    spec = symdsl.find_spec(name)
    model = build_example(spec)
    assert type(model).__name__.endswith("Model") and spec.document.example.output == "last_hidden_state"
    assert symdsl.api.pipeline.spec_for(None, model, REGISTRIES).name == name
    assert "resid" in resolve(spec, model, registries=REGISTRIES).sites


@pytest.mark.parametrize("case", FAMILIES)
def test_the_returned_hidden_states_move_with_the_declared_site(case):
    # equivariance is a claim about real outputs: they do move, by exactly the site's element
    from symdsl.act import act_state_dict, random_transform

    model = backbone(case).double()
    resolved = resolve(symdsl.find_spec(spec_name(case)), model, registries=REGISTRIES)
    site = resid_output_site(case)
    g = random_transform(resolved, [site], seed=4)
    moved = backbone(case).double()
    use_exact_kernels(model), use_exact_kernels(moved)            # Mixtral's experts: a float64 path
    moved.load_state_dict(act_state_dict(resolved, model.state_dict(), g), strict=False)
    with torch.no_grad():
        before, after = model(IDS).last_hidden_state, moved(IDS).last_hidden_state
    expected = before[..., g[site]] if g[site].dtype == torch.int64 else before @ g[site].T
    assert float((after - before).abs().max()) > 1e-2                        # the output really moved ...
    assert float((after - expected).abs().max() / expected.abs().max()) < 1e-6   # ... as declared


@pytest.mark.parametrize("case", FAMILIES)
def test_the_causal_lm_class_still_matches_the_family_spec(case):
    _, causal_cls, causal_spec, _ = FAMILIES[case]
    model = backbone(case, causal=True)
    assert type(model).__name__ == causal_cls
    assert symdsl.api.pipeline.spec_for(None, model, REGISTRIES).name == causal_spec
    # and the backbone spec, named explicitly, does not bind to it: its names lack the task model's
    # prefix (reported at the first dim read from a module, else at the tensors)
    with pytest.raises(SymdslError, match="tensors are not in the model|no module|no tensor") as error:
        resolve(symdsl.find_spec(spec_name(case)), model, registries=REGISTRIES)
    assert f"{spec_name(case)}.yaml:" in str(error.value)


def test_pre_and_post_layernorm_opt_backbones_are_told_apart_by_their_config():
    pre, post = backbone("hf-opt-backbone"), backbone("hf-opt-postln-backbone")
    assert symdsl.api.pipeline.spec_for(None, pre, REGISTRIES).name == "hf-opt-backbone"
    assert symdsl.api.pipeline.spec_for(None, post, REGISTRIES).name == "hf-opt-postln-backbone"
    with pytest.raises(SymdslError, match="do_layer_norm_before = True, but this model's is False"):
        resolve(symdsl.find_spec("hf-opt-backbone"), post, registries=REGISTRIES)
    with pytest.raises(SymdslError, match="do_layer_norm_before = False, but this model's is True"):
        resolve(symdsl.find_spec("hf-opt-postln-backbone"), pre, registries=REGISTRIES)


@pytest.mark.parametrize("case", FAMILIES)
def test_weight_matching_recovers_a_hidden_element(case):
    before, after = hidden_element_distances(symdsl.find_spec(spec_name(case)), backbone(case))
    assert before > 0.5 and after < 1e-6, (before, after)


@pytest.mark.parametrize("case", FAMILIES)
def test_symdsl_check_on_a_saved_backbone_folder_finds_the_spec_and_passes(case, tmp_path, capsys):
    from symdsl.cli.main import main

    backbone(case).save_pretrained(tmp_path / "tiny")
    assert main(["check", "--model", str(tmp_path / "tiny")]) == 0
    out = capsys.readouterr().out
    assert f"spec {spec_name(case)} " in out and "ok: every op respects the declared sites" in out
    assert "result: OK" in out


def _rotating_backbone(causal_spec: str, prefix: str, backbone_cls: str, final_gain: str):
    """The family's ForCausalLM spec turned into one for the backbone that keeps its rotation of the
    stream (inner norms folded, writers centred as there), the final norm's gain bound to the stream
    and the hidden states declared equivariant: what a backbone spec would be if the final gain
    commuted with a rotation."""
    text = Path(symdsl.find_spec(causal_spec).file).read_text()
    text = text[:text.index("\nheads:")] + '\noutputs:\n  last_hidden_state: "_ _ resid"\n'
    text = text.replace(f"prefix: [{prefix}]\n", "").replace("output: logits", "output: last_hidden_state")
    if f"  - {final_gain}\n" in text:                                 # RMSNorm families: invariant after folding
        text = text.replace(f"  - {final_gain}\n", "").replace("\ninvariant:", f"\n  {final_gain}: resid\ninvariant:")
    assert f"  {final_gain}: resid" in text
    return symdsl.load_spec_text(text.replace("name: " + causal_spec, "name: rotating"), file="rotating.yaml")


@pytest.mark.parametrize("case, final_norm", [
    ("hf-llama-backbone", "norm"),                         # RMSNorm, full rotation in hf-llama
    ("hf-gpt-neox-backbone", "final_layer_norm"),          # LayerNorm, rotation fixing the ones vector
])
def test_a_rotation_of_the_stream_fails_at_the_final_norm_and_only_there(case, final_norm):
    backbone_cls, _, causal_spec, _ = FAMILIES[case]
    prefix = {"hf-llama": "model.", "hf-gpt-neox": "gpt_neox."}[causal_spec]
    spec = _rotating_backbone(causal_spec, prefix, backbone_cls, f"{final_norm}.weight")
    static = static_check(spec, backbone(case), registries=REGISTRIES)
    assert not static.ok and {f.module for f in static.findings} == {final_norm}
    assert {f.site for f in static.findings} == {"resid"}
    numeric = numeric_check(spec, backbone(case), registries=REGISTRIES)
    assert numeric.failed_sites == ["resid"]                # every other site still holds


@pytest.mark.parametrize("case", ["hf-llama-backbone", "hf-opt-backbone"])
def test_without_the_declared_output_both_checks_fail_at_the_residual(case):
    text = Path(symdsl.find_spec(spec_name(case)).file).read_text()
    cut = text[:text.index("\noutputs:")] + "\n"
    spec = symdsl.load_spec_text(cut, file="no-outputs.yaml")
    static = static_check(spec, backbone(case), registries=REGISTRIES)
    assert not static.ok and {f.site for f in static.findings} == {"resid"}
    numeric = numeric_check(spec, backbone(case), registries=REGISTRIES)
    assert numeric.failed_sites == ["resid"]


@pytest.mark.parametrize("case", ["hf-llama-backbone", "hf-gpt-neox-backbone"])
def test_a_final_gain_left_unbound_fails_numerically(case):
    # declared invariant instead of moving with the stream, the final gain breaks the permutation
    final = {"hf-llama-backbone": "norm.weight", "hf-gpt-neox-backbone": "final_layer_norm.weight"}[case]
    text = Path(symdsl.find_spec(spec_name(case)).file).read_text()
    line = next(x for x in text.splitlines() if x.startswith(f"  {final}: resid"))
    cut = text.replace(line + "\n", "").replace("\noutputs:", f"\ninvariant: [{final}]\noutputs:")
    spec = symdsl.load_spec_text(cut, file="unbound-gain.yaml")
    numeric = numeric_check(spec, backbone(case), registries=REGISTRIES)
    assert not numeric.ok and "resid" in numeric.failed_sites
    static = static_check(spec, backbone(case), registries=REGISTRIES)
    assert not static.ok and any(final.rsplit(".", 1)[0] == f.module for f in static.findings)
