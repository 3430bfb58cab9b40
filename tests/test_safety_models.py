"""Models are compared before any work, and checkpoints are read completely (issue 16).

Configurations must agree up to fields that cannot matter (symdsl.api.compat), a missing or
unexpected tensor is an error naming it, and a checkpoint's dtype is kept.
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import symdsl
from symdsl.cli.main import main
from symdsl.errors import UsageError
from symdsl.models import load_model, save_model

from safety_models import gpt2_folder, tiny_gpt2


def test_a_4_head_and_a_2_head_gpt2_of_one_width_are_refused_naming_n_head(tmp_path, capsys):
    a, b = tiny_gpt2(0, n_head=4), tiny_gpt2(1, n_head=2)
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    with pytest.raises(UsageError, match="n_head 2 vs 4"):
        symdsl.align(a, b)
    with pytest.raises(UsageError, match="n_head"):
        symdsl.merge([a, b])
    folders = [str(gpt2_folder(tmp_path / "a", 0, n_head=4)), str(gpt2_folder(tmp_path / "b", 1, n_head=2))]
    for argv in (["align", *folders, "-o", str(tmp_path / "out")], ["barrier", *folders, "--data", "digits"]):
        assert main(argv) == 2
        assert "n_head" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_different_depth_is_refused_naming_n_layer():
    with pytest.raises(UsageError, match="n_layer 3 vs 2"):
        symdsl.align(tiny_gpt2(0), tiny_gpt2(1, n_layer=3))


def test_fields_that_cannot_matter_may_differ():
    a, b = tiny_gpt2(0), tiny_gpt2(1, attn_pdrop=0.3, use_cache=False, initializer_range=0.5)
    b.config._name_or_path = "elsewhere"
    assert symdsl.align(a, b, verify=False).spec.name == "hf-gpt2"


def test_a_narrower_model_may_differ_in_width_fields_only():
    from symdsl.api.compat import check_compatible

    spec = symdsl.find_spec("hf-gpt2")
    check_compatible([tiny_gpt2(0), tiny_gpt2(1, n_embd=16, n_head=2)], spec, lift=True)
    with pytest.raises(UsageError, match="activation_function"):
        check_compatible([tiny_gpt2(0), tiny_gpt2(1, n_embd=16, activation_function="relu")], spec, lift=True)


def test_a_checkpoint_missing_a_tensor_is_refused_naming_it(tmp_path, capsys):
    folder = gpt2_folder(tmp_path / "g")
    state = load_file(str(folder / "model.safetensors"))
    del state["transformer.h.1.mlp.c_fc.weight"]
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(UsageError, match="missing tensor.*'transformer.h.1.mlp.c_fc.weight'"):
        load_model(str(folder))
    assert main(["check", "--model", str(folder)]) == 2
    assert "transformer.h.1.mlp.c_fc.weight" in capsys.readouterr().err


def test_an_unexpected_tensor_is_refused_naming_it(tmp_path):
    folder = gpt2_folder(tmp_path / "g")
    state = load_file(str(folder / "model.safetensors"))
    state["transformer.h.9.extra"] = torch.zeros(2)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(UsageError, match="unexpected tensor.*'transformer.h.9.extra'"):
        load_model(str(folder))


def linear_folder(tmp_path, dtype=torch.float32):
    net = torch.nn.Linear(3, 8).to(dtype)
    net.symdsl_config = {"in_features": 3, "out_features": 8}
    return save_model(net, tmp_path / "net")


def test_a_symdsl_folder_keeps_its_dtype(tmp_path):
    assert load_model(str(linear_folder(tmp_path, torch.float16))).weight.dtype == torch.float16


def test_a_symdsl_folder_with_a_missing_tensor_or_a_wrong_shape_is_refused(tmp_path):
    folder = linear_folder(tmp_path)
    save_file({"weight": torch.zeros(8, 3)}, str(folder / "model.safetensors"))
    with pytest.raises(UsageError, match="missing tensor.*'bias'"):
        load_model(str(folder))
    save_file({"weight": torch.zeros(8, 4), "bias": torch.zeros(8)}, str(folder / "model.safetensors"))
    with pytest.raises(UsageError, match=r"'weight' has shape \(8, 4\), it needs \(8, 3\)"):
        load_model(str(folder))


def test_a_truncated_safetensors_file_is_reported_as_such(tmp_path):
    folder = linear_folder(tmp_path)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UsageError, match="not a readable safetensors file"):
        load_model(str(folder))


@pytest.mark.parametrize("text", ["{not json", '{"architectures": "GPT2LMHeadModel"}', '{"architectures": ["os"]}'])
def test_an_invalid_config_json_is_reported(tmp_path, text):
    folder = gpt2_folder(tmp_path / "g")
    (folder / "config.json").write_text(text)
    with pytest.raises(UsageError, match="config.json"):
        load_model(str(folder))


@pytest.mark.parametrize("text", ["{not json", '["a"]', '{"class": 5}', '{"class": "torch.nn:Linear", "config": {"x": 1}}'])
def test_an_invalid_model_record_is_reported(tmp_path, text):
    folder = linear_folder(tmp_path)
    (folder / "symdsl_model.json").write_text(text)
    with pytest.raises(UsageError, match="symdsl_model.json"):
        load_model(str(folder))


def test_a_pickled_checkpoint_is_refused_without_unpickling(tmp_path):
    file = tmp_path / "w.pt"
    torch.save(torch.nn.Linear(3, 8), file)          # a whole pickled module, not a state dict
    with pytest.raises(UsageError, match="never unpickles"):
        load_model("torch.nn:Identity", checkpoint=str(file))


def test_a_timm_checkpoint_that_is_a_folder_or_missing_is_reported(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_model(f"timm:vit_tiny_patch16_224@{tmp_path / 'none.safetensors'}")


def test_weights_of_the_wrong_shape_for_the_config_are_refused(tmp_path):
    folder = gpt2_folder(tmp_path / "g")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "vocab_size": 80}))
    with pytest.raises(UsageError, match=r"'transformer.wte.weight' does not fit the configuration: \(64, 32\) in the "
                       r"checkpoint, \(80, 32\) in config.json"):
        load_model(str(folder))
