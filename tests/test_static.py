"""Static check: shipped specs pass on the traced graph; seeded wrong specs are rejected with a
message naming the offending graph node (or tensor / site, for errors found while binding)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import SHIPPED
from symdsl.check.static import static_check
from symdsl.cli.main import main
from symdsl.errors import SpecError
from symdsl.spec import load_spec_text
from symdsl import find_spec
from conftest import REGISTRIES


@pytest.mark.parametrize("name", SHIPPED + ["hf-gpt2-backbone", "hf-gpt2-rmsnorm", "timm-vit-rmsnorm",
                                             "hf-gpt2-circuits", "timm-vit-circuits"])
def test_shipped_specs_pass_on_the_exported_graph(name):
    report = static_check(find_spec(name), backend="export", registries=REGISTRIES)
    assert report.backend == "export" and report.nodes > 50
    assert report.ok, [str(f) for f in report.findings]
    assert report.unused_tensors == []


def test_vit_passes_with_the_fx_backend_too():
    report = static_check(find_spec("timm-vit"), backend="fx", registries=REGISTRIES)
    assert report.backend == "fx" and report.ok, [str(f) for f in report.findings]


def _edit(name, *replacements):
    text = Path(find_spec(name).file).read_text()
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new, 1)
    return load_spec_text(text, f"{name}-seeded.yaml")


QKV_GPT2 = "[heads.${i} qk.${i} | heads.${i} qk.${i}' | heads.${i} ov.${i}]"
QKV_VIT = QKV_GPT2

SEEDED = {
    "orthogonal site through GELU": (
        "timm-vit", [("mlp.${i}:   {group: permutation", "mlp.${i}:   {group: orthogonal")],
        "gelu", "site mlp.0 (orthogonal) reaches gelu"),
    "post-LN residual declared orthogonal": (
        "hf-bert", [("resid:      {group: permutation", "resid:      {group: orthogonal, preserve: ones")],
        "layer_norm", "whose gain is not constant"),
    "rotation without preserve ones": (
        "hf-gpt2", [("size: d, preserve: ones", "size: d")],
        "layer_norm", "must fix the ones vector"),
    "gain left unfolded": (
        "hf-gpt2", [('  - fold_layernorm: {norm: "h.${i}.ln_2", readers: ["h.${i}.mlp.c_fc.weight"]}\n', "")],
        "layer_norm", "gain is not constant"),
    "reader primal where it must be dual": (
        "hf-gpt2", [("\"(heads.${i} ov.${i}') resid\"", "\"(heads.${i} ov.${i}) resid\"")],
        "addmm_1", "site ov.0 (invertible, per heads.0) with itself, both sides primal"),
    "q and k both primal": (
        "timm-vit", [(f"\"{QKV_VIT} resid'\"", "\"[heads.${i} qk.${i} | heads.${i} qk.${i} | heads.${i} ov.${i}] resid'\""),
                     (f"\"{QKV_VIT}\"\n", "\"[heads.${i} qk.${i} | heads.${i} qk.${i} | heads.${i} ov.${i}]\"\n")],
        "scaled_dot_product_attention", "attention scores q·k contracts site qk.0"),
    "head split with the wrong factor order": (
        "hf-gpt2", [(f"\"resid' {QKV_GPT2}\"", "\"resid' [qk.${i} heads.${i} | heads.${i} qk.${i}' | heads.${i} ov.${i}]\""),
                    (f"\"{QKV_GPT2}\"\n", "\"[qk.${i} heads.${i} | heads.${i} qk.${i}' | heads.${i} ov.${i}]\"\n")],
        "view", "cuts factor qk.0"),
    "output projection factors swapped": (
        "timm-vit", [("\"resid (heads.${i} ov.${i}')\"", "\"resid (ov.${i}' heads.${i})\"")],
        "linear_1", "contracts (heads.0 ov.0) with (ov.0' heads.0)"),
    "fused split in the wrong order": (
        "timm-vit", [(f"\"{QKV_VIT} resid'\"", "\"[heads.${i} ov.${i} | heads.${i} qk.${i} | heads.${i} qk.${i}'] resid'\""),
                     (f"\"{QKV_VIT}\"\n", "\"[heads.${i} ov.${i} | heads.${i} qk.${i} | heads.${i} qk.${i}']\"\n")],
        "scaled_dot_product_attention", "contracts ov.0 with qk.0"),
}


def test_a_reader_declared_invariant_is_rejected_at_its_node():
    from conftest import build_hf

    spec = _edit("hf-bert", ("    tensors:\n      classifier.weight: \"_ pool'\"\n    invariant: [classifier.bias]",
                             "    invariant: [classifier.weight, classifier.bias]"))
    report = static_check(spec, build_hf("hf-bert", "BertForSequenceClassification"), registries=REGISTRIES)
    first = report.findings[0]
    assert first.module == "classifier" and "contracts pool with _" in first.message, str(first)


@pytest.mark.parametrize("case", sorted(SEEDED))
def test_seeded_wrong_spec_is_rejected_at_the_right_node(case):
    name, edits, node_prefix, message = SEEDED[case]
    report = static_check(_edit(name, *edits), registries=REGISTRIES)
    assert not report.ok
    first = report.findings[0]
    assert first.node.startswith(node_prefix), str(first)
    assert message in first.message or message in str(first), str(first)
    assert first.source and ".py:" in first.source           # the user's source line
    assert first.spec_entry is None or "-seeded.yaml:" in first.spec_entry


@pytest.mark.parametrize("case, edits, message", [
    ("missing tensor", [("  ln_f.bias: resid\n", "")], "'transformer.ln_f.bias' (32,) is neither bound"),
    ("unused site", [("sites:\n", "sites:\n  spare: {group: permutation, size: d}\n")], "site 'spare' is declared but no tensor uses it"),
    ("tied weight declared only once", [("      - untie: [lm_head.weight, transformer.wte.weight]\n", "")], "transformer.wte.weight"),
])
def test_seeded_binding_errors_name_the_tensor_or_site(case, edits, message):
    with pytest.raises(SpecError) as info:
        static_check(_edit("hf-gpt2", *edits), registries=REGISTRIES)
    assert message in str(info.value)


class CumsumNet(torch.nn.Module):
    """A residual stream that passes through an op symdsl has no rule for (cumsum)."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(10, 8)
        self.norm = torch.nn.LayerNorm(8)
        self.out = torch.nn.Linear(8, 3)

    def forward(self, ids):
        x = self.emb(ids).cumsum(-1)
        return self.out(self.norm(x))


CUMSUM_SPEC = """
symdsl: 1
name: cumsum
example: {factory: "test_static:CumsumNet", inputs: {ids: {randint: [0, 10], shape: [2, 5]}}}
sites: {resid: {group: permutation, size: 8}}
tensors: {emb.weight: "_ resid", norm.weight: resid, norm.bias: resid, out.weight: "_ resid'"}
invariant: [out.bias]
"""


def test_an_op_without_a_rule_on_a_site_axis_fails_closed():
    report = static_check(load_spec_text(CUMSUM_SPEC, "cumsum.yaml"), CumsumNet(), registries=REGISTRIES)
    assert not report.ok
    first = report.findings[0]
    assert first.node.startswith("cumsum") and "has no symmetry rule" in first.message
    assert "site resid (permutation)" in first.message


def test_cli_exits_1_and_names_the_node(tmp_path, capsys):
    text = Path(find_spec("timm-vit").file).read_text()
    bad = tmp_path / "vit-gelu.yaml"
    bad.write_text(text.replace("mlp.${i}:   {group: permutation", "mlp.${i}:   {group: orthogonal", 1))
    assert main(["check", str(bad), "--static-only"]) == 1
    out = capsys.readouterr().out
    assert "VIOLATION node gelu" in out and "timm/layers/mlp.py" in out and "blocks.0.mlp.act" in out
    assert f"{bad}:" in out                                      # the spec entry, file:line
