"""Helpers for the output tests: a Hugging Face Hub cache laid out on disk, as snapshot_download leaves it."""
from __future__ import annotations

import shutil
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


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
