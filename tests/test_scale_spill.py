"""Tensors canonicalization wrote are spilled to files mapped back in: same bits, pages releasable.

:func:`symdsl.models.spill.spill_written` moves each written tensor (heap memory, or copied-on-write
pages of a mapped checkpoint) into a file in the spill folder, maps it back privately and removes
the file. ``symdsl align`` does it for A and B (into OUT's parent folder) so that the written half
of each model does not stay resident through matching; the written output must not change by a bit.
"""
from __future__ import annotations

import sys

import pytest
import torch
from safetensors import safe_open

from symdsl.api import pipeline
from symdsl.cli.main import main
from symdsl.models import pages, spill
from symdsl.models.pages import anonymous_bytes, release_pages

from test_scale_shards import llama_folder

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self (Linux)")


class Tied(torch.nn.Module):
    """An embedding and an output matrix sharing one (V, d) tensor, plus a small bias."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Parameter(torch.randn(1024, 512, generator=torch.Generator().manual_seed(0)))
        self.out = self.embed
        self.register_buffer("scale", torch.randn(1024, 256, generator=torch.Generator().manual_seed(1)))
        self.bias = torch.nn.Parameter(torch.randn(16))


def test_spilled_tensors_keep_their_bits_and_their_ties_and_leave_memory_once_read(tmp_path):
    model = Tied()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = {k: v.detach() for k, v in model.state_dict(keep_vars=True).items()}
    assert anonymous_bytes(state["embed"]) >= 1024 * 512 * 4 - 8192          # heap memory: written
    embed_object = model.embed
    spilled = spill.spill_written(model, state, tmp_path)
    assert spilled == 1024 * 512 * 4 + 1024 * 256 * 4                         # the tie counted once; bias too small
    assert list(tmp_path.iterdir()) == []                                      # files removed at once
    assert model.embed is embed_object and model.out is model.embed           # same Parameter, still tied
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name                        # the same bits
        assert tensor.data_ptr() == state[name].data_ptr(), name              # the state follows the model
    assert state["bias"].data_ptr() == before["bias"].data_ptr() or torch.equal(state["bias"], before["bias"])
    float(state["embed"].sum()), float(state["scale"].sum())                   # read: the file's pages come in
    assert anonymous_bytes(state["embed"]) == 0 and anonymous_bytes(state["scale"]) == 0
    assert release_pages([state["embed"], state["scale"]]) >= spilled - 4 * 8192   # and can be handed back
    assert torch.equal(model.embed, before["embed"]) and torch.equal(model.scale, before["scale"])
    model.embed.data.mul_(2)                                                  # a private mapping: writable
    assert torch.equal(model.out, 2 * before["embed"])


def test_a_checkpoint_s_written_tensor_is_spilled_and_its_copied_pages_go(tmp_path):
    """As transformers loads it: one private mapping per shard, tensors are views into it. Folding
    writes one tensor (the kernel copies its pages); spilling moves that one only and drops the
    copies, which the shard's mapping would otherwise keep while its other tensors are in use."""
    from safetensors.torch import save_file
    n = 8 << 20                                                 # 32 MB of float32 each
    save_file({"read": torch.arange(n, dtype=torch.float32), "written": torch.ones(n)}, str(tmp_path / "m.safetensors"))
    size = (tmp_path / "m.safetensors").stat().st_size
    storage = torch.UntypedStorage.from_file(str(tmp_path / "m.safetensors"), shared=False, nbytes=size)
    header = int.from_bytes(bytes(storage[:8].tolist()), "little") + 8
    flat = torch.tensor([], dtype=torch.float32).set_(storage, header // 4, (2 * n,))
    model = torch.nn.Module()
    model.read, model.written = torch.nn.Parameter(flat[:n]), torch.nn.Parameter(flat[n:])
    model.written.data.mul_(3)                                 # copy on write: 32 MB of anonymous pages
    old_view = flat[n:]                                        # the shard's bytes at that place
    assert anonymous_bytes(old_view) >= 4 * n - 8192
    state = {k: v.detach() for k, v in model.state_dict().items()}
    spill_dir = tmp_path / "spill"
    spill_dir.mkdir()
    assert spill.spill_written(model, state, spill_dir) == 4 * n           # only the written one
    assert model.read.data_ptr() == old_view.data_ptr() - 4 * n             # the unwritten one stays put
    assert torch.equal(model.written, torch.full((n,), 3.0))                # the written values, from the spill
    assert anonymous_bytes(old_view) == 0                                   # the kernel's copies are gone
    inner = slice(1024, n - 1024)                                            # (pages shared with a neighbour stay)
    assert torch.equal(old_view[inner], torch.ones(n)[inner])                 # the place reads the file again


def test_unwritten_mapped_and_small_tensors_stay(tmp_path):
    model = Tied()
    state = {k: v.detach() for k, v in model.state_dict().items()}
    spill.spill_written(model, state, tmp_path)
    pointers = {k: v.data_ptr() for k, v in state.items()}
    assert spill.spill_written(model, state, tmp_path) == 0                    # mapped and unwritten now
    assert {k: v.data_ptr() for k, v in state.items()} == pointers


def test_a_folder_without_room_spills_nothing_and_says_so(tmp_path, monkeypatch, caplog):
    model = Tied()
    state = {k: v.detach() for k, v in model.state_dict().items()}
    pointers = {k: v.data_ptr() for k, v in state.items()}
    monkeypatch.setattr(spill.shutil, "disk_usage", lambda path: type("U", (), {"free": 1 << 20})())
    assert spill.spill_written(model, state, tmp_path) == 0
    assert {k: v.data_ptr() for k, v in state.items()} == pointers
    assert "not spilling" in caplog.text and str(tmp_path) in caplog.text


@pytest.mark.parametrize("tied", [False, True])
def test_the_command_line_writes_the_same_bits_with_and_without_spilling(tmp_path, monkeypatch, tied):
    llama_folder(tmp_path / "a", 0, tie_word_embeddings=tied)
    llama_folder(tmp_path / "b", 1, tie_word_embeddings=tied)
    common = [str(tmp_path / "a"), str(tmp_path / "b"), "--no-verify", "--option", "max_iter=2"]
    assert main(["align", *common, "-o", str(tmp_path / "kept"), "--no-spill"]) == 0
    monkeypatch.setattr(spill, "MIN_SPILL_BYTES", 1)             # the tiny model's tensors are all small
    spilled = []
    real = spill.spill_written
    monkeypatch.setattr(pipeline, "spill_written", lambda *a: spilled.append(real(*a)) or spilled[-1])
    (tmp_path / "spill").mkdir()
    assert main(["align", *common, "-o", str(tmp_path / "spilled"), "--spill-dir", str(tmp_path / "spill")]) == 0
    assert len(spilled) == 2 and all(n > 0 for n in spilled)                  # A and B: the folded readers
    assert list((tmp_path / "spill").iterdir()) == []
    files = sorted(p.name for p in (tmp_path / "kept").glob("*.safetensors"))
    assert files == sorted(p.name for p in (tmp_path / "spilled").glob("*.safetensors")) and len(files) >= 2
    for name in files:
        with safe_open(str(tmp_path / "kept" / name), "pt") as want, \
                safe_open(str(tmp_path / "spilled" / name), "pt") as got:
            assert sorted(got.keys()) == sorted(want.keys()) and got.metadata() == want.metadata()
            for key in want.keys():
                assert torch.equal(got.get_tensor(key), want.get_tensor(key)), (name, key)


def test_a_spill_folder_that_does_not_exist_is_refused_before_loading(tmp_path, capsys):
    code = main(["align", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(tmp_path / "out"),
                 "--spill-dir", str(tmp_path / "nowhere")])
    assert code != 0
    err = capsys.readouterr().err
    assert "--spill-dir" in err and "nowhere" in err and "--no-spill" in err


def test_pages_knows_whether_it_can_look():
    assert pages.can_inspect()
