"""Hugging Face Hub ids as model references: ``org/name``, ``org/name@revision``, bare ``gpt2``.

A REF that is not an existing local path and looks like a Hub id is fetched with
``huggingface_hub.snapshot_download`` into its cache (``HF_HUB_CACHE``, shared with
transformers), then loaded like any local folder: the same trust rules apply
(:mod:`symdsl.models.trust`), because a Hub folder is data just like a local one.

- A local folder of the same path wins: ``runs/a`` is never looked up when it exists.
- ``./x``, ``/x``, ``~/x`` and anything with ``:`` (``timm:NAME``, ``module:factory``) are never
  Hub ids, so a typo in an explicit path never reaches the network.
- ``HF_HUB_OFFLINE=1`` (read when the model is loaded, not when the library was imported) uses
  the cache only; an id that is not cached is one error naming the id and the cache folder.
- Only what a model folder needs is fetched: its record, the weights (``model*.safetensors``,
  else ``pytorch_model*.bin``) and the companion files outputs carry
  (:data:`symdsl.models.companions.COMPANION_FILES`); never code files.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import UsageError
from .companions import COMPANION_FILES, COMPANION_FOLDERS

# A Hub repo id (optionally owner/), then an optional @revision (branch, tag or commit).
_HUB_REF = re.compile(r"(?P<repo>(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[\w.][\w./-]*))?")
_TRUE = {"1", "ON", "YES", "TRUE"}       # what huggingface_hub accepts as a true environment flag

_RECORDS = ["config.json", "symdsl_model.json"]
_EXTRAS = [*COMPANION_FILES, *(f"{folder}/*{suffix}" for folder, suffix in COMPANION_FOLDERS.items())]
_SAFETENSORS = ["model*.safetensors", "model.safetensors.index.json"]
_PICKLES = ["pytorch_model*.bin", "pytorch_model.bin.index.json"]   # read with weights_only, never unpickled code


def parse_hub_ref(ref: str) -> tuple[str, str | None] | None:
    """``(repo_id, revision)`` when ``ref`` has the form of a Hub id, else None.

    >>> parse_hub_ref("openai-community/gpt2@main"), parse_hub_ref("gpt2")
    (('openai-community/gpt2', 'main'), ('gpt2', None))
    >>> parse_hub_ref("./runs/a"), parse_hub_ref("timm:vit_tiny"), parse_hub_ref("a/b/c")
    (None, None, None)
    """
    if ref.startswith((".", "/", "~")) or ":" in ref or "\\" in ref:
        return None
    match = _HUB_REF.fullmatch(ref)
    if match is None or ".." in match["repo"]:
        return None
    return match["repo"], match["revision"]


def hub_cache() -> str:
    """The cache folder huggingface_hub uses now: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else its default.

    >>> import os
    >>> hub_cache() == os.environ["HF_HUB_CACHE"] if "HF_HUB_CACHE" in os.environ else bool(hub_cache())
    True
    """
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def hub_offline() -> bool:
    """Is ``HF_HUB_OFFLINE`` set to a true value (1, ON, YES, TRUE) right now?"""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in _TRUE


def hub_folder(ref: str) -> Path:
    """The local snapshot folder of the Hub id ``ref`` (downloaded, or from the cache when offline).

    Offline and not cached: one error naming the id and ``HF_HUB_CACHE``.

    >>> hub_folder("./runs/a")
    Traceback (most recent call last):
    ...
    symdsl.errors.UsageError: './runs/a' is not a Hugging Face Hub id; give org/name or org/name@revision
    """
    parsed = parse_hub_ref(ref)
    if parsed is None:
        raise UsageError(f"'{ref}' is not a Hugging Face Hub id; give org/name or org/name@revision")
    repo, revision = parsed
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise UsageError(f"loading the Hub model '{ref}' needs huggingface_hub: pip install 'symdsl[hf]'") from None
    cache, offline = hub_cache(), hub_offline()

    def fetch(patterns: list[str]) -> Path:
        return Path(snapshot_download(repo, revision=revision, cache_dir=cache, local_files_only=offline,
                                      allow_patterns=patterns))
    try:
        folder = fetch(_RECORDS + _EXTRAS + _SAFETENSORS)
        if not any(folder.glob("model*.safetensors")):      # an older repo: pickled weights only
            folder = fetch(_RECORDS + _EXTRAS + _PICKLES)
    except (OSError, ValueError) as exc:   # not found, gated, offline and not cached, bad id, network down
        if offline:
            raise UsageError(f"Hub model '{ref}' is not in the cache (HF_HUB_CACHE={cache}) and HF_HUB_OFFLINE is "
                             "set: download it once with network access (unset HF_HUB_OFFLINE), or give a local "
                             "folder") from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"no local folder '{ref}', and the Hub model '{ref}' could not be fetched "
                         f"(HF_HUB_CACHE={cache}): {first[:300]}; for a local folder check the path (./PATH is "
                         "never looked up on the Hub)") from None
    return folder
