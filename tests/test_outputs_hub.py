"""Hub ids as model references, resolved through a Hub cache laid out in tmp_path (issue 17).

Every test runs with ``HF_HUB_OFFLINE=1`` and the sockets blocked: the network is never touched.
"""
from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
import torch
import yaml

import symdsl
from symdsl.cli.main import main
from symdsl.errors import UsageError
from symdsl.models import load_model
from symdsl.models.hub import parse_hub_ref

from safety_models import gpt2_folder

FAST = ["--no-verify", "--option", "max_iter=2"]
COMMIT = "0123456789abcdef0123456789abcdef01234567"   # a snapshot's commit hash


def hub_cache_entry(cache: Path, repo_id: str, folder: Path, *, commit: str = COMMIT, ref: str = "main") -> Path:
    """Put ``folder``'s files into ``cache`` as the Hub model ``repo_id`` at ``commit`` (``refs/<ref>``).

    Like huggingface_hub's own cache: files live in ``blobs/`` and the snapshot holds relative
    links to them. Returns the snapshot folder.
    """
    entry = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = entry / "snapshots" / commit
    (entry / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for file in folder.iterdir():
        blob = entry / "blobs" / f"{commit[:8]}-{file.name}"
        shutil.copyfile(file, blob)
        (snapshot / file.name).symlink_to(Path("..") / ".." / "blobs" / blob.name)
    (entry / "refs").mkdir(exist_ok=True)
    (entry / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An offline Hub cache at tmp/hub holding org/a, org/b (with a tokenizer) and gpt2; cwd is tmp/work."""
    def no_network(*args, **kwargs):
        raise AssertionError("the network was touched")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for repo, seed in (("org/a", 0), ("org/b", 1), ("gpt2", 2)):
        folder = gpt2_folder(tmp_path / "src" / repo, seed)
        if repo == "org/b":
            (folder / "vocab.json").write_text('{"hello": 0}')
        hub_cache_entry(tmp_path / "hub", repo, folder)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    return tmp_path / "hub"


def _weights(model):
    return model.state_dict()["transformer.h.0.mlp.c_fc.weight"]


def test_align_two_hub_ids_from_the_command_line(hub):
    assert main(["align", "org/a", f"org/b@{COMMIT}", "-o", "out", *FAST]) == 0
    out = load_model("out")
    assert type(out).__name__ == "GPT2LMHeadModel"
    record = json.loads(open("out/symdsl.json").read())
    assert record["base_models"] == ["org/a", f"org/b@{COMMIT}"]
    assert record["companions"] == ["vocab.json"]     # generation_config.json comes with the checkpoint itself
    assert open("out/vocab.json").read() == '{"hello": 0}'        # B's file, from its snapshot (a link to a blob)
    front = yaml.safe_load(open("out/README.md").read().split("---\n")[1])
    assert front["base_model"] == ["org/a", f"org/b@{COMMIT}"]


def test_revisions_bare_names_and_the_snapshot_folder(hub):
    model = load_model("org/b@main")
    assert model.symdsl_ref == "org/b@main"
    assert model.symdsl_source == str((hub / "models--org--b" / "snapshots" / COMMIT).resolve())
    torch.testing.assert_close(_weights(load_model("org/b")), _weights(model))
    assert type(load_model("gpt2")).__name__ == "GPT2LMHeadModel"
    with pytest.raises(UsageError, match="'org/b@v9' is not in the cache"):      # a tag never downloaded
        load_model("org/b@v9")


def test_an_id_that_is_not_cached_is_one_clear_error(hub, capsys):
    assert main(["align", "org/a", "org/missing", "-o", "out", *FAST]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("symdsl")]   # not progress bars
    assert len(lines) == 1
    err = lines[0]
    assert err.startswith("symdsl align: error: ") and "'org/missing'" in err and f"HF_HUB_CACHE={hub}" in err
    assert "HF_HUB_OFFLINE" in err and "internal error" not in err


def test_a_local_folder_of_the_same_path_wins(hub, monkeypatch):
    local = gpt2_folder(hub.parent / "work" / "org" / "a", 7)
    model = load_model("org/a")
    assert model.symdsl_source == str(local.resolve())
    assert not torch.equal(_weights(model), _weights(load_model("org/a@main")))
    monkeypatch.setattr("huggingface_hub.snapshot_download", lambda *a, **k: pytest.fail("looked up on the Hub"))
    for ref in ("./org/none", "timm:org/none"):          # explicit paths and prefixed REFs are never Hub ids
        assert parse_hub_ref(ref) is None
    with pytest.raises(UsageError, match="does not exist"):
        load_model("./org/none")


def test_hub_folders_follow_the_trust_rules_and_are_never_written(hub, tmp_path):
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "symdsl_model.json").write_text(json.dumps({"class": "subprocess:getoutput", "config": {}}))
    (planted / "model.safetensors").write_bytes(b"")
    hub_cache_entry(hub, "evil/model", planted)
    with pytest.raises(UsageError, match="would run code named in data.*--trust-code"):
        load_model("evil/model")
    a, b = load_model("org/a"), load_model("org/b")
    alignment = symdsl.align(a, b, verify=False, max_iter=2)
    with pytest.raises(UsageError, match="is the input"):
        alignment.save(b.symdsl_source, overwrite=True)
    with pytest.raises(UsageError, match="is inside the input"):
        alignment.save(hub / "models--org--a" / "snapshots" / COMMIT / "sub")
