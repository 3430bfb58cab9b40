"""Sharded bfloat16 checkpoints out as they came in: an aligned (or merged) model keeps the layout
input's shard files, its tensor -> shard map and its dtype, and B's function to bfloat16 precision."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from symdsl.cli.main import main
from symdsl.models import load_model
from symdsl.models.build import perturb_parameters, quiet_transformers
from symdsl.models.save import write_model
from symdsl.models.shards import INDEX, ShardLayout, read_layout

from test_llama import CONFIG

FAST = ["--no-verify", "--option", "max_iter=2"]
BF16_EPS = torch.finfo(torch.bfloat16).eps        # 2^-7: one unit in the last place of bfloat16


def llama_folder(folder, seed, **overrides):
    """A tiny perturbed Llama saved in bfloat16 as several shards (save_pretrained's max_shard_size)."""
    import transformers

    torch.manual_seed(seed)
    with quiet_transformers():
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**CONFIG, **overrides}))
        perturb_parameters(model, seed=seed, scale=0.3)
        if model.config.tie_word_embeddings:
            model.tie_weights()
        model.to(torch.bfloat16).save_pretrained(folder, max_shard_size="12KB")
    assert len(read_layout(folder).files) >= 3      # really sharded
    return folder


def stored(folder) -> dict[str, tuple[str, torch.dtype]]:
    """tensor -> (shard file, dtype) as written in ``folder``."""
    weight_map = json.loads((folder / INDEX).read_text())["weight_map"]
    out = {}
    for file in sorted(set(weight_map.values())):
        with safe_open(str(folder / file), "pt") as handle:
            for name in handle.keys():
                out[name] = (file, handle.get_slice(name).get_dtype())
    return out


def relative_logit_error(folder, b) -> float:
    ids = torch.randint(0, CONFIG["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = load_model(str(folder)).float()(ids).logits
        want = b.float()(ids).logits
    return float((got - want).norm() / want.norm())


@pytest.mark.parametrize("tied", [False, True])
def test_align_writes_b_s_shards_in_b_s_dtype_with_b_s_function(tmp_path, tied):
    a, b = llama_folder(tmp_path / "a", 0, tie_word_embeddings=tied), llama_folder(tmp_path / "b", 1,
                                                                                    tie_word_embeddings=tied)
    out = tmp_path / "out"
    assert main(["align", str(a), str(b), "-o", str(out), *FAST]) == 0
    b_files, out_files = stored(b), stored(out)
    layout_b = json.loads((b / INDEX).read_text())["weight_map"]
    layout_out = json.loads((out / INDEX).read_text())["weight_map"]
    assert sorted(set(layout_out.values())) == sorted(set(layout_b.values()))   # the same file names
    assert {p.name for p in out.glob("*.safetensors")} == {p.name for p in b.glob("*.safetensors")} | {
        "transform.safetensors"}
    for name, file in layout_b.items():         # every tensor of B in B's shard, in B's dtype
        assert out_files[name] == b_files[name] == (file, "BF16"), name
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    notes = json.loads((out / "symdsl.json").read_text())["notes"]
    if tied:    # the rotation unties the embedding: lm_head gets its own tensor, in the last shard, and a note
        last = sorted(set(layout_b.values()))[-1]
        assert "lm_head.weight" not in layout_b and out_files["lm_head.weight"] == (last, "BF16")
        assert any("'lm_head.weight' is not in the layout input's index" in n for n in notes)
    else:
        assert set(layout_out) == set(layout_b)
    assert next(load_model(str(out)).parameters()).dtype == torch.bfloat16
    # B's function, to what bfloat16 weights can hold (rotated weights are rounded once more)
    error = relative_logit_error(out, load_model(str(b)))
    assert error < 4 * BF16_EPS, error


def test_merge_keeps_the_first_model_s_shards(tmp_path):
    a, b = llama_folder(tmp_path / "a", 0), llama_folder(tmp_path / "b", 1)
    out = tmp_path / "merged"
    assert main(["merge", str(a), str(b), "-o", str(out), *FAST]) == 0
    assert json.loads((out / INDEX).read_text())["weight_map"] == json.loads((a / INDEX).read_text())["weight_map"]
    assert {dtype for _, dtype in stored(out).values()} == {"BF16"}
    assert next(load_model(str(out)).parameters()).dtype == torch.bfloat16


def test_an_index_naming_a_tensor_the_model_lacks_falls_back_to_save_pretrained_with_a_note(tmp_path):
    b = load_model(str(llama_folder(tmp_path / "b", 1)))
    layout = read_layout(tmp_path / "b")
    renamed = {("renamed." + k if k.endswith("embed_tokens.weight") else k): v for k, v in layout.weight_map.items()}
    odd = ShardLayout(layout.folder, layout.files, renamed, layout.dtypes, layout.metadata)
    (tmp_path / "out").mkdir()
    notes = write_model(b, tmp_path / "out", torch.bfloat16, odd)
    assert any("'renamed.model.embed_tokens.weight', which the model does not have" in n for n in notes)
    assert not (tmp_path / "out" / INDEX).exists() and (tmp_path / "out" / "model.safetensors").exists()
    assert relative_logit_error(tmp_path / "out", b) == 0.0


def test_a_broken_index_is_refused_naming_the_tensor_and_the_shard(tmp_path):
    b = llama_folder(tmp_path / "b", 1)
    index = json.loads((b / INDEX).read_text())
    index["weight_map"]["model.norm.weight"] = "../elsewhere.safetensors"
    (b / INDEX).write_text(json.dumps(index))
    with pytest.raises(Exception, match="'model.norm.weight' -> '../elsewhere.safetensors' is not a file name"):
        read_layout(b)
