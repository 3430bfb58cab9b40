"""Data-aware weight matching: weigh vocabulary (and position) rows by how often the data uses them.

A language model's embedding and unembedding have one row per token id, and with a 50,257-id
BPE vocabulary on a small corpus most rows were never trained: they keep their random start and
differ between the two models for no reason. Unweighted, every one of them votes on the residual
rotation. Weighted matching minimises

    J_w(g) = sum_t sum_r w_t[r] ||A_t[r] - act(g, B)_t[r]||^2

where r runs over the rows of a tensor's *row axis* (the vocabulary or position axis, bound to
no site) and w_t[r] = 1 for every other tensor. Because no site acts on that axis, act(g, B)
scales with B's rows, so  J_w(g) = J(g)  on the tensors with rows scaled by sqrt(w): plain
weight matching of the scaled state dicts finds the weighted optimum, and its elements apply
unchanged to the unscaled tensors. That is all this module does (:func:`weigh_rows`).

Where the weights come from (:func:`row_weights`):
- a dataset (``--data``): token counts of its train split (``symdsl.data.token_counts``) on the
  axes whose length is the vocabulary size (none of that length, e.g. a padded embedding: no
  weighting, with a warning); on a position table (an axis longer than the dataset's
  ``block_size`` of a 2-D tensor on the same sites as the token embedding), 1 for the positions
  the data uses and 0 beyond;
- a file (``token_weights=FILE``): counts per token id, ``.json`` (a list with one number per id,
  or an object ``{"id": count}``, missing ids 0) or ``.safetensors`` (one 1-D tensor); the file
  wins over the dataset's counts.
``token_weighting`` turns counts into weights: ``counts`` (w = n), ``sqrt`` (w = sqrt n), ``mask``
(w = 1 if n > 0), ``none`` (off). Every scheme is normalised to a total of the number of seen ids,
so the three give the vocabulary tensors the same total weight and differ only in how it is spread.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Mapping

import torch

from symdsl.data import TOKEN_TASKS, token_counts
from symdsl.errors import UsageError

WEIGHTINGS = ("counts", "sqrt", "mask", "none")
log = logging.getLogger("symdsl.weight")


def row_axes(resolved) -> list[tuple[str, int, int]]:
    """``(tensor, axis, length)`` for every axis bound to no site (one unbound part), the rows a
    weighting can scale without changing what any site does.

    >>> row_axes(type("R", (), {"tensors": {}})())
    []
    """
    out = []
    for name, binding in resolved.tensors.items():
        for index, axis in enumerate(binding.axes):
            if len(axis.parts) == 1 and len(axis.parts[0]) == 1 and axis.parts[0][0].site is None:
                if binding.sites():            # a tensor no site touches is constant under matching anyway
                    out.append((name, index, axis.parts[0][0].size))
    return out


def read_counts(path: str | Path) -> torch.Tensor:
    """Counts per token id from ``path`` (.json list or {"id": count}; .safetensors with one 1-D tensor), float64.

    >>> import tempfile, os
    >>> with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
    ...     _ = f.write('{"0": 3, "2": 1}')
    >>> read_counts(f.name).tolist()
    [3.0, 0.0, 1.0]
    >>> os.unlink(f.name)
    """
    path = Path(path)
    fix = ("give a .json list with one count per token id, a .json object {\"id\": count}, or a .safetensors "
           "file holding one 1-D tensor of counts")
    if not path.is_file():
        raise UsageError(f"token_weights file '{path}' does not exist; {fix}")
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise UsageError(f"token_weights file '{path}' is not JSON ({exc}); {fix}") from None
        if isinstance(data, dict):
            try:
                items = {int(k): float(v) for k, v in data.items()}
            except (TypeError, ValueError):
                raise UsageError(f"token_weights file '{path}': keys must be token ids and values numbers; {fix}") \
                    from None
            if any(k < 0 for k in items):
                raise UsageError(f"token_weights file '{path}': negative token id {min(items)}; {fix}")
            counts = torch.zeros(max(items, default=-1) + 1, dtype=torch.float64)
            for k, v in items.items():
                counts[k] = v
        elif isinstance(data, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in data):
            counts = torch.tensor(data, dtype=torch.float64)
        else:
            raise UsageError(f"token_weights file '{path}' holds {type(data).__name__}; {fix}")
    elif path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
        except Exception as exc:                       # safetensors raises its own error types
            raise UsageError(f"token_weights file '{path}' is not a safetensors file ({exc}); {fix}") from None
        if len(tensors) != 1 or next(iter(tensors.values())).dim() != 1:
            shapes = {k: tuple(v.shape) for k, v in tensors.items()}
            raise UsageError(f"token_weights file '{path}' holds {shapes}, not one 1-D tensor; {fix}")
        counts = next(iter(tensors.values())).to(torch.float64)
    else:
        raise UsageError(f"token_weights file '{path}' has suffix '{path.suffix}'; {fix}")
    if not bool(torch.isfinite(counts).all()) or bool((counts < 0).any()):
        raise UsageError(f"token_weights file '{path}' has negative or non-finite counts; counts are >= 0")
    return counts


def weights_from_counts(counts: torch.Tensor, weighting: str) -> torch.Tensor:
    """(V,) float64 weights from (V,) counts; total = number of ids with a nonzero count.

    >>> weights_from_counts(torch.tensor([0., 1., 3.]), "counts").tolist()
    [0.0, 0.5, 1.5]
    >>> weights_from_counts(torch.tensor([0., 1., 3.]), "mask").tolist()
    [0.0, 1.0, 1.0]
    """
    counts = counts.to(torch.float64)
    seen = counts > 0
    if not bool(seen.any()):
        raise UsageError("token weights: every count is 0, so every vocabulary row would be ignored")
    raw = {"counts": counts, "sqrt": counts.sqrt(), "mask": seen.to(torch.float64)}[weighting]
    return raw * (float(seen.sum()) / float(raw.sum()))


def row_weights(resolved, *, dataset=None, file: str | Path | None = None,
                weighting: str = "counts") -> dict[tuple[str, int], torch.Tensor]:
    """``{(tensor, axis): (length,) float64 weights}`` for the row axes that the data or file covers.

    Empty when ``weighting`` is ``none`` or neither a (masked) language-model dataset nor a file is given
    (then weight matching is exactly the unweighted one). A file whose length is no row axis's
    length is refused, naming the file, its length and the vocabulary size.
    """
    if weighting == "none" or (file is None and (dataset is None or dataset.task not in TOKEN_TASKS)):
        return {}
    axes = row_axes(resolved)
    if file is not None:
        counts = read_counts(file)
        if not any(length == counts.numel() for _, _, length in axes):
            sizes = ", ".join(f"'{t}' axis {i}: {n}" for t, i, n in axes) or "none"
            raise UsageError(f"token_weights file '{file}' has {counts.numel()} entries, but the model's vocabulary "
                             f"has {max((n for *_, n in axes), default=0)} ids (axes bound to no site: {sizes}); give "
                             "one count per token id of the model's vocabulary")
        vocab = counts.numel()
    else:
        counts, vocab = token_counts(dataset, "train"), dataset.vocab_size
        if not any(length == vocab for _, _, length in axes):
            # e.g. an embedding padded beyond the tokenizer's ids: which axis is the vocabulary is
            # then a guess, so nothing is weighted (matching as without data) and the log says so
            log.warning("data '%s' has %d token ids and no tensor has a vocabulary axis of that length: weight "
                        "matching weighs every row alike (give token_weights=FILE with one count per row)",
                        dataset.name, vocab)
            return {}
    token = weights_from_counts(counts, weighting)
    out = {(name, axis): token for name, axis, length in axes if length == vocab}
    block = getattr(dataset, "block_size", None)
    writes_like_tokens = {frozenset(resolved.tensors[name].sites()) for name, _ in out}
    for name, axis, length in axes:
        # a position table: rows on an axis longer than the data's blocks, writing to the same sites as
        # the token embedding; positions >= block_size never occur in the data: weight 0, the rest 1
        if (length != vocab and block is not None and length > block and len(resolved.tensors[name].axes) == 2
                and frozenset(resolved.tensors[name].sites()) in writes_like_tokens):
            out[(name, axis)] = (torch.arange(length) < block).to(torch.float64)
    return out


def weigh_rows(state: Mapping[str, torch.Tensor], weights: Mapping[tuple[str, int], torch.Tensor]) -> dict:
    """``state`` with each weighted tensor's rows scaled by sqrt(w) along its row axis, rows of weight 0
    left out (others shared).

    A row of weight 0 would be a zero row in A and B: it adds nothing to any correlation or norm
    the matcher forms (every site acts on other axes), so leaving it out changes no result and
    saves the work. On a GPT-2 vocabulary of 50,257 ids of which about 11,000 occur in Tiny
    Shakespeare, the embedding shrinks 4.5x.

    >>> s = weigh_rows({"e": torch.ones(3, 2)}, {("e", 0): torch.tensor([4., 0., 1.], dtype=torch.float64)})
    >>> s["e"][:, 0].tolist()
    [2.0, 1.0]
    """
    out = dict(state)
    for (name, axis), w in weights.items():
        tensor = out[name]
        kept = torch.nonzero(w > 0).flatten()                                          # (rows kept,)
        shape = [1] * tensor.dim()
        shape[axis] = -1
        scale = w[kept].sqrt().to(device=tensor.device, dtype=tensor.dtype).reshape(shape)   # broadcast along the axis
        out[name] = tensor.index_select(axis, kept.to(tensor.device)) * scale
    return out
