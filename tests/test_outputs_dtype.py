"""``--dtype``: outputs keep the input's dtype or are cast when written; matching runs in float32 or better."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

import symdsl
from symdsl.cli.main import main
from symdsl.errors import UsageError
from symdsl.models import load_model
from symdsl.models.build import quiet_transformers

from safety_models import gpt2_folder, tiny_gpt2

FAST = ["--no-verify", "--option", "max_iter=2"]


def written(folder) -> set[torch.dtype]:
    """The dtypes of the floating tensors in ``folder/model.safetensors``."""
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return {f.get_tensor(k).dtype for k in f.keys() if f.get_tensor(k).is_floating_point()}


def half_folder(path, seed, dtype=torch.float16):
    with quiet_transformers():
        tiny_gpt2(seed).to(dtype).save_pretrained(path)
    return path


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_align_casts_the_written_tensors_and_the_config_says_so(tmp_path, dtype):
    a, b = gpt2_folder(tmp_path / "a", 0), gpt2_folder(tmp_path / "b", 1)
    out = tmp_path / "out"
    assert main(["align", str(a), str(b), "-o", str(out), "--dtype", dtype, *FAST]) == 0
    assert written(out) == {getattr(torch, dtype)}
    assert json.loads((out / "config.json").read_text())["dtype"] == dtype
    assert json.loads((out / "symdsl.json").read_text())["dtype"] == dtype
    assert next(load_model(str(out)).parameters()).dtype == getattr(torch, dtype)


def test_auto_keeps_a_half_precision_input_s_dtype_while_matching_runs_in_float32(tmp_path):
    a, b = (load_model(str(half_folder(tmp_path / n, s))) for n, s in (("a", 0), ("b", 1)))
    alignment = symdsl.align(a, b, verify=False, max_iter=2)
    # weight-only work keeps the canonical copies in the input's dtype (bounded memory); the matcher
    # and the action engine upcast one tensor at a time where they compute
    assert alignment.prepared.states[1]["transformer.h.0.mlp.c_fc.weight"].dtype == torch.float16
    assert next(alignment.model.parameters()).dtype == torch.float16
    alignment.save(tmp_path / "out")
    assert written(tmp_path / "out") == {torch.float16}
    assert next(b.parameters()).dtype == torch.float16          # the input is left as it was
    ids = torch.randint(0, 64, (2, 8))
    with torch.no_grad():      # the float16 output still computes B's function (to float16 precision)
        got = load_model(str(tmp_path / "out")).float()(ids).logits
        torch.testing.assert_close(got, b.float()(ids).logits, rtol=2e-2, atol=2e-2)


def test_auto_keeps_float32_and_a_tied_model_casts_cleanly(tmp_path):
    a, b = gpt2_folder(tmp_path / "a", 0), gpt2_folder(tmp_path / "b", 1)
    assert main(["align", str(a), str(b), "-o", str(tmp_path / "f32"), *FAST]) == 0
    assert written(tmp_path / "f32") == {torch.float32}
    # permutations give B its tied embeddings back; the float16 copy must stay tied and complete
    assert main(["align", str(a), str(b), "-o", str(tmp_path / "tied"), "--permutations-only", "--dtype", "float16",
                 *FAST]) == 0
    model = load_model(str(tmp_path / "tied"))
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    assert model.lm_head.weight.dtype == torch.float16


def test_merge_casts_a_first_model_kept_in_bfloat16(tmp_path):
    models = [str(half_folder(tmp_path / f"m{i}", i, torch.bfloat16)) for i in range(2)]
    assert main(["merge", *models, "-o", str(tmp_path / "auto"), *FAST]) == 0
    assert written(tmp_path / "auto") == {torch.bfloat16}
    assert main(["merge", *models, "-o", str(tmp_path / "f32"), "--dtype", "float32", *FAST]) == 0
    assert written(tmp_path / "f32") == {torch.float32}


def test_a_bad_dtype_is_refused_before_any_work(tmp_path, capsys):
    net = tiny_gpt2(0)
    with pytest.raises(UsageError, match="dtype 'int8' is not an output dtype; choose one of auto"):
        symdsl.align(net, tiny_gpt2(1), dtype="int8")
    with pytest.raises(SystemExit):
        main(["merge", "x", "y", "-o", str(tmp_path / "o"), "--dtype", "float64"])
    assert "invalid choice: 'float64'" in capsys.readouterr().err
