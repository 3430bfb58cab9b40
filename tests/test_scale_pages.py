"""A checkpoint's mapped pages leave the resident set once read, and nothing written is lost.

transformers maps safetensors shards privately: reading a tensor brings its pages in, and they
stay. :func:`symdsl.models.pages.release_pages` drops the unwritten ones (the file still has
them) and must never drop a page that canonicalization wrote (the only copy of the new values).
"""
from __future__ import annotations

import sys

import pytest
import torch
from safetensors.torch import save_file

from symdsl.models.pages import release_pages

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self (Linux)")


def resident_file_bytes() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("RssFile:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssFile in /proc/self/status")


def test_read_pages_go_and_written_pages_stay(tmp_path):
    n = 8 << 20                                      # 32 MB of float32 in each tensor
    save_file({"read": torch.arange(n, dtype=torch.float32), "written": torch.ones(n)}, str(tmp_path / "m.safetensors"))
    # a private (copy-on-write) mapping of the file, as the loader makes it
    storage = torch.UntypedStorage.from_file(str(tmp_path / "m.safetensors"), shared=False,
                                             nbytes=(tmp_path / "m.safetensors").stat().st_size)
    header = int.from_bytes(bytes(storage[:8].tolist()), "little") + 8
    flat = torch.tensor([], dtype=torch.float32).set_(storage, header // 4, (2 * n,))
    read, written = flat[:n], flat[n:]             # the two tensors (safetensors writes them in name order)
    assert float(read[-1]) == n - 1 and float(written[0]) == 1.0
    read.sum(), written.mul_(3)                     # read one, write (copy on write) the other
    before = resident_file_bytes()
    dropped = release_pages([read, written])
    assert dropped >= 4 * n - 8192                  # the read tensor's whole pages, nothing of the written one
    assert dropped <= 4 * n
    assert resident_file_bytes() < before - 0.9 * 4 * n    # (the kernel's counters lag by a few pages)
    assert torch.equal(read, torch.arange(n, dtype=torch.float32))          # read back from the file
    assert torch.equal(written, torch.full((n,), 3.0))                     # the written values survive


def test_memory_not_mapped_from_a_file_is_never_touched():
    x = torch.randn(1 << 20)
    y = x.clone()
    assert release_pages([x, torch.zeros(0), x[1:7]]) == 0
    assert torch.equal(x, y)


def test_small_tensors_are_skipped_without_reading_the_mappings(tmp_path, monkeypatch):
    import symdsl.models.pages as pages
    n = (pages.MIN_RELEASE_BYTES // 4) - 1024         # just under the threshold, in float32
    save_file({"small": torch.arange(n, dtype=torch.float32)}, str(tmp_path / "s.safetensors"))
    storage = torch.UntypedStorage.from_file(str(tmp_path / "s.safetensors"), shared=False,
                                             nbytes=(tmp_path / "s.safetensors").stat().st_size)
    header = int.from_bytes(bytes(storage[:8].tolist()), "little") + 8
    small = torch.tensor([], dtype=torch.float32).set_(storage, header // 4, (n,))
    small.sum()

    def refuse():
        raise AssertionError("the mappings were read for a tensor under the threshold")
    monkeypatch.setattr(pages, "_private_file_mappings", refuse)
    assert release_pages([small]) == 0
    assert torch.equal(small, torch.arange(n, dtype=torch.float32))
