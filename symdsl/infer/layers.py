"""Repeated layers, found by name: ``h.0.``, ``blocks.3.``, ``encoder.layer.1.``.

A draft is written with ``repeat: {i: L}`` templates when the model's tensors have a layer
container (the path before the first numeric component shared by most names) whose layers
0 ... L-1 hold the same tensor names; :func:`templatize` then folds per-layer names of a list
into ``container.${i}.rest`` entries. Whether the layers' *symmetries* are the same too is
decided by the caller (it compares the patterns written with templated site names).
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

_INDEX = re.compile(r"^(?P<container>(?:[^.]+\.)*?[^.]+)\.(?P<index>\d+)\.(?P<rest>.+)$")


@dataclass
class Layers:
    """The layer container ``container`` with ``count`` layers, each holding tensors ``rests``."""

    container: str
    count: int
    rests: list[str]

    def split(self, name: str) -> tuple[int, str] | None:
        """``(layer index, rest of the name)`` for a name inside a layer, else None.

        >>> Layers("blocks", 2, ["mlp.fc1.weight"]).split("blocks.1.mlp.fc1.weight")
        (1, 'mlp.fc1.weight')
        """
        m = _INDEX.match(name)
        if m and m["container"] == self.container and int(m["index"]) < self.count:
            return int(m["index"]), m["rest"]
        return None

    def name(self, index: int | str, rest: str) -> str:
        return f"{self.container}.{index}.{rest}"


def find_layers(names: list[str]) -> Layers | None:
    """The layer container of a model's tensor names, when every layer has the same tensors.

    >>> find_layers(["wte.weight", "h.0.ln.weight", "h.0.fc.weight", "h.1.ln.weight", "h.1.fc.weight"])
    Layers(container='h', count=2, rests=['fc.weight', 'ln.weight'])
    """
    found: dict[str, dict[int, set[str]]] = {}
    for name in names:
        m = _INDEX.match(name)
        if m:
            found.setdefault(m["container"], {}).setdefault(int(m["index"]), set()).add(m["rest"])
    if not found:
        return None
    counts = Counter({c: sum(len(r) for r in layers.values()) for c, layers in found.items()})
    container = counts.most_common(1)[0][0]
    layers = found[container]
    count = max(layers) + 1
    if sorted(layers) != list(range(count)) or any(layers[i] != layers[0] for i in layers):
        return None
    return Layers(container, count, sorted(layers[0]))


def templatize(names: list[str], layers: Layers | None) -> list[str]:
    """Fold names present in every layer into one ``${i}`` entry, keeping first-seen order.

    >>> lay = Layers("h", 2, ["w"])
    >>> templatize(["wte", "h.0.w", "h.1.w", "h.0.x"], lay)
    ['wte', 'h.${i}.w', 'h.0.x']
    """
    if layers is None:
        return list(dict.fromkeys(names))
    present = set(names)
    out: list[str] = []
    for name in names:
        where = layers.split(name)
        if where is not None and all(layers.name(i, where[1]) in present for i in range(layers.count)):
            name = layers.name("${i}", where[1])
        if name not in out:
            out.append(name)
    return out
