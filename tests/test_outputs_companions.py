"""Outputs carry the tokenizer and friends of the input whose layout they keep (issue 17).

``align``: B's files; ``merge`` (pairwise and universe): the first model's. Files are chosen by
an allow-list of names and copied byte for byte; nothing else from the input comes along.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from symdsl.cli.main import main
from symdsl.errors import UsageError
from symdsl.models import load_model
from symdsl.models.companions import COMPANION_FILES, companion_files, copy_companions

from safety_models import gpt2_folder

# Shared data lives beside the repository (../shared/data), never inside it (as in test_data.py).
GPT2_TOKENIZER = Path(__file__).parents[2] / "shared" / "data" / "gpt2_tokenizer"
FAST = ["--no-verify", "--option", "max_iter=2"]      # the files are the point here, not the matching
TEXT = "Before we proceed any further, hear me speak.\nSpeak, speak!  <|endoftext|> naïve café"


def _with_files(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


@pytest.mark.skipif(not GPT2_TOKENIZER.is_dir(), reason=f"the shared GPT-2 tokenizer is not at {GPT2_TOKENIZER}")
def test_an_aligned_model_tokenizes_exactly_as_b(tmp_path):
    import transformers

    a, b = gpt2_folder(tmp_path / "a", 0), gpt2_folder(tmp_path / "b", 1)
    for file in GPT2_TOKENIZER.iterdir():      # B ships the real GPT-2 tokenizer (copied into tmp, not the repo)
        shutil.copyfile(file, b / file.name)
    _with_files(b, {"chat_template.jinja": "{% for m in messages %}{{ m['content'] }}{% endfor %}",
                    "tokenization_gpt2_custom.py": "raise SystemExit('never copied, never run')",
                    "notes.txt": "not a companion"})
    out = tmp_path / "out"
    assert main(["align", str(a), str(b), "-o", str(out), *FAST]) == 0
    mine, theirs = (transformers.AutoTokenizer.from_pretrained(str(p)) for p in (out, b))
    assert mine(TEXT)["input_ids"] == theirs(TEXT)["input_ids"] and len(mine(TEXT)["input_ids"]) > 10
    assert mine.decode(mine(TEXT)["input_ids"]) == TEXT
    assert mine.chat_template == theirs.chat_template is not None
    names = {p.name for p in out.iterdir()}
    assert {"vocab.json", "merges.txt", "tokenizer_config.json", "chat_template.jinja"} <= names
    assert not names & {"tokenization_gpt2_custom.py", "notes.txt"}
    record = json.loads((out / "symdsl.json").read_text())
    assert "vocab.json" in record["companions"] and "notes.txt" not in record["companions"]
    assert (out / "vocab.json").read_bytes() == (GPT2_TOKENIZER / "vocab.json").read_bytes()


def test_a_merge_carries_the_first_model_s_files_pairwise_and_universe(tmp_path):
    models = [gpt2_folder(tmp_path / f"m{i}", i) for i in range(3)]
    for i, folder in enumerate(models):     # each model's files say whose they are
        _with_files(folder, {"vocab.json": json.dumps({"from": i}), "special_tokens_map.json": json.dumps({"i": i}),
                             "additional_chat_templates/tool.jinja": f"template {i}"})
    (models[0] / "generation_config.json").unlink()           # save_pretrained writes one from the model anyway
    _with_files(models[1], {"preprocessor_config.json": "{}"})  # only a later model has it: not carried
    for args, out in ((models[:2], tmp_path / "pair"), (models, tmp_path / "universe")):
        assert main(["merge", *map(str, args), "-o", str(out), *FAST]) == 0
        assert json.loads((out / "vocab.json").read_text()) == {"from": 0}
        assert (out / "additional_chat_templates" / "tool.jinja").read_text() == "template 0"
        assert not (out / "preprocessor_config.json").exists()
        assert (out / "generation_config.json").exists()     # written with the checkpoint
        assert type(load_model(str(out))).__name__ == "GPT2LMHeadModel"


def test_the_allow_list_copies_processor_and_sentencepiece_files_and_nothing_else(tmp_path):
    source = _with_files(tmp_path / "src", {name: name for name in ("preprocessor_config.json", "spiece.model",
                                                                    "tokenizer.model", "added_tokens.json")})
    _with_files(source, {"modeling_custom.py": "x", "model.safetensors": "x", "config.json": "{}",
                         "additional_chat_templates/run.py": "x", "README.md": "theirs"})
    target = tmp_path / "out"
    target.mkdir()
    (target / "added_tokens.json").write_text("written by the checkpoint writer")
    copied = copy_companions(source, target)
    assert copied == ["preprocessor_config.json", "spiece.model", "tokenizer.model"]
    assert (target / "added_tokens.json").read_text() == "written by the checkpoint writer"    # never replaced
    assert sorted(p.name for p in target.iterdir()) == ["added_tokens.json", *copied]
    assert set(companion_files(source)) <= set(COMPANION_FILES)


def test_a_companion_linking_outside_the_model_folder_is_refused_and_nothing_is_written(tmp_path, capsys):
    secret = tmp_path / "secret.txt"
    secret.write_text("private key")
    a, b = gpt2_folder(tmp_path / "a", 0), gpt2_folder(tmp_path / "b", 1)
    (b / "tokenizer.json").symlink_to(secret)
    out = tmp_path / "out"
    assert main(["align", str(a), str(b), "-o", str(out), *FAST]) == 2
    err = capsys.readouterr().err
    assert f"{b / 'tokenizer.json'}" in err and "outside the model folder" in err and "internal error" not in err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    (b / "inside.json").write_text("{}")       # a link inside the folder is the folder's own file
    (b / "tokenizer.json").unlink()
    (b / "tokenizer.json").symlink_to(b / "inside.json")
    target = tmp_path / "t"
    target.mkdir()
    assert copy_companions(b, target) == ["generation_config.json", "tokenizer.json"]
    with pytest.raises(UsageError, match="outside the model folder"):
        (b / "vocab.json").symlink_to(secret)
        copy_companions(b, tmp_path / "t2")


def test_an_aligned_model_tokenizes_exactly_as_b_with_a_tokenizer_built_here(tmp_path):
    # the same claim without shared data: a byte-level BPE tokenizer trained here, saved the
    # transformers way into B (tokenizer.json + tokenizer_config.json + special tokens)
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders

    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([TEXT * 20], trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")
    a, b = gpt2_folder(tmp_path / "a", 0), gpt2_folder(tmp_path / "b", 1)
    fast.save_pretrained(b)
    out = tmp_path / "out"
    assert main(["align", str(a), str(b), "-o", str(out), *FAST]) == 0
    mine, theirs = (transformers.AutoTokenizer.from_pretrained(str(p)) for p in (out, b))
    ids = mine(TEXT)["input_ids"]
    assert ids == theirs(TEXT)["input_ids"] and len(ids) > 5 and mine.decode(ids) == TEXT
    assert (out / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
