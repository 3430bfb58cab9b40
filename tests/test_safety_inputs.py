"""Ordinary bad input gets a one-line error and a non-zero exit, never "internal error" (issue 16)."""
from __future__ import annotations

import pytest
import torch

import symdsl
from symdsl.cli.main import main
from symdsl.data import text_dataset
from symdsl.errors import UsageError

from safety_models import gpt2_folder, tiny_gpt2


@pytest.fixture
def pair(tmp_path):
    return str(gpt2_folder(tmp_path / "a", 0)), str(gpt2_folder(tmp_path / "b", 1))


def run(argv, capsys) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err
    assert "internal error" not in err and "Traceback" not in err
    return code, err


def test_a_text_file_that_is_not_utf8_is_located(pair, tmp_path, capsys):
    text = tmp_path / "latin1.txt"
    text.write_bytes(("to be or not to be\ncaf\u00e9 " * 20).encode("latin-1"))
    code, err = run(["barrier", *pair, "--data", f"text:{text}"], capsys)
    assert code == 2 and f"{text}:2:4: not UTF-8 text (byte 0xe9)" in err


def test_a_device_that_does_not_exist(pair, tmp_path, capsys):
    code, err = run(["align", *pair, "-o", str(tmp_path / "out"), "--device", "nonsense"], capsys)
    assert code == 2 and "--device 'nonsense' is not a device" in err
    assert not (tmp_path / "out").exists()


def test_nan_weights_are_refused_naming_the_tensor(tmp_path, capsys):
    b = tiny_gpt2(1)
    with torch.no_grad():
        b.transformer.h[0].mlp.c_fc.weight[0, 0] = float("nan")
    with pytest.raises(UsageError, match="model 1 has NaN or infinite values in 'transformer.h.0.mlp.c_fc.weight'"):
        symdsl.align(tiny_gpt2(0), b)
    b.save_pretrained(tmp_path / "nan")
    code, err = run(["merge", str(gpt2_folder(tmp_path / "a")), str(tmp_path / "nan"), "-o", str(tmp_path / "m")],
                    capsys)
    assert code == 2 and "NaN" in err


def test_a_text_with_more_characters_than_the_vocabulary(pair, tmp_path, capsys):
    text = tmp_path / "wide.txt"
    text.write_text("".join(chr(0x4E00 + i) for i in range(100)) * 50)      # 100 characters > 64 embeddings
    code, err = run(["barrier", *pair, "--data", f"text:{text}"], capsys)
    assert code == 2 and "100 tokens in its vocabulary, the model's embedding only 64" in err


def test_blocks_longer_than_the_model_reads():
    data = text_dataset("to be or not to be " * 40, block_size=32)          # the model has 16 positions
    with pytest.raises(UsageError, match="blocks of 32 tokens, the model reads at most 16"):
        symdsl.barrier(tiny_gpt2(0), tiny_gpt2(1), data)


def test_an_unknown_block_name_is_an_error(capsys):
    code, err = run(["--block", "no-such-plugin", "specs"], capsys)
    assert code == 2 and "no-such-plugin" in err
