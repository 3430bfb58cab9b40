"""The files beside a checkpoint that make an output usable as it is: tokenizer, chat template, processors.

An aligned or merged model is only as useful as the tokenizer that feeds it, so outputs carry
the companion files of the input whose checkpoint layout they keep (``align``: B; ``merge``: the
first model, the reference whose class and configuration the merge is loaded into). The files are
chosen by an allow-list of names (:data:`COMPANION_FILES`, and ``*.jinja`` templates in
:data:`COMPANION_FOLDERS`), copied byte for byte and never executed or parsed: a tokenizer's
Python code (``tokenization_*.py``) is not on the list and is never copied.

A companion that is a symbolic link must point inside the model folder (or, for a Hub snapshot,
inside its cache entry, where every file is a link to a blob): a planted ``tokenizer.json`` linking
to a private file elsewhere would otherwise be copied into an output that may be published.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..errors import UsageError

COMPANION_FILES = (
    # tokenizers: fast (tokenizer.json), BPE (vocab.json + merges.txt), WordPiece (vocab.txt), sentencepiece
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "merges.txt", "vocab.txt", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model",
    "source.spm", "target.spm",
    # chat templates (transformers >= 4.43 keeps them apart from tokenizer_config.json)
    "chat_template.jinja", "chat_template.json",
    # generation defaults, image/audio/video preprocessing, multimodal processors
    "generation_config.json", "preprocessor_config.json", "processor_config.json",
    "video_preprocessor_config.json",
)
COMPANION_FOLDERS = {"additional_chat_templates": ".jinja"}   # folder -> suffix of the files copied from it
MAX_BYTES = 1 << 30     # the largest tokenizer files are tens of MB; a GB-sized "tokenizer" is not one


def companion_files(folder: str | Path) -> list[str]:
    """The companion files present in ``folder``, as paths relative to it (sorted).

    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ("tokenizer.json", "tokenization_evil.py", "model.safetensors"):
    ...     _ = (root / name).write_text("{}")
    >>> companion_files(root)
    ['tokenizer.json']
    """
    folder = Path(folder)
    found = [name for name in COMPANION_FILES if (folder / name).is_file()]
    for sub, suffix in COMPANION_FOLDERS.items():
        if (folder / sub).is_dir():
            found += [f"{sub}/{p.name}" for p in (folder / sub).iterdir() if p.name.endswith(suffix) and p.is_file()]
    return sorted(found)


def _root(folder: Path) -> Path:
    """Where links in ``folder`` may point: the folder, or for a Hub snapshot its cache entry (blobs)."""
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        return folder.parent.parent
    return folder


def copy_companions(source: str | Path, target: str | Path) -> list[str]:
    """Copy ``source``'s companion files into ``target``; return what was copied.

    A file the checkpoint writer already put into ``target`` (``generation_config.json`` from
    ``save_pretrained``, made from the same model's settings) is kept. Errors name the file.

    >>> import tempfile, pathlib
    >>> src, out = (pathlib.Path(tempfile.mkdtemp()) for _ in range(2))
    >>> _ = (src / "vocab.json").write_text('{"a": 0}')
    >>> copy_companions(src, out), (out / "vocab.json").read_text()
    (['vocab.json'], '{"a": 0}')
    """
    source, target = Path(source), Path(target)
    root = Path(os.path.realpath(_root(source)))
    copied = []
    for name in companion_files(source):
        file, destination = source / name, target / name
        if destination.exists():
            continue
        real = Path(os.path.realpath(file))
        if root not in real.parents:
            raise UsageError(f"{file}: a link to '{real}', outside the model folder; symdsl copies only the model's "
                             "own files into outputs: replace the link with the file itself")
        if real.stat().st_size > MAX_BYTES:
            raise UsageError(f"{file}: {real.stat().st_size} bytes, too large for a {name.rsplit('/')[-1]}; "
                             "remove it from the model folder if it is not the model's")
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(real, destination)
        copied.append(name)
    return copied
