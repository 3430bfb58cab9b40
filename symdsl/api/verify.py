"""Refuse to align with a spec that fails its own check on the model at hand.

An unchecked spec (a hand edit, an ``infer`` draft that failed, a spec for a neighbouring
architecture) gives a silent wrong answer: the "aligned" model no longer computes what B did.
So ``align``, ``merge`` and ``barrier`` first run the static and numeric checks on model A and
refuse (``SymdslError``) when either fails, unless told ``verify=False`` (``--no-verify``).
A passing result is cached on disk per (spec text, model class, configuration, parameter
shapes, plugins), so the check costs its seconds once per architecture, not per call.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from .._version import __version__
from ..check.numeric import numeric_check
from ..check.static import static_check
from ..errors import SymdslError
from ..paths import cache_root
from ..registry import Registries
from ..spec.config import model_config
from ..spec.load import Spec


def checks_cache() -> Path:
    """Where passing checks are remembered: ``$SYMDSL_CACHE/checks`` (default ``~/.cache/symdsl/checks``)."""
    return cache_root() / "checks"


def fingerprint(spec: Spec, model: torch.nn.Module, registries: Registries) -> str:
    """A key for (spec text, model class and configuration, parameter shapes, plugins, symdsl version).

    >>> import symdsl, torch
    >>> from symdsl.plugins import load
    >>> net = torch.nn.Linear(2, 3)
    >>> spec = symdsl.load_spec_text('symdsl: 1\\nname: t\\nsites: {u: {group: permutation, size: 3}}\\n'
    ...                              'tensors: {weight: "u _", bias: u}\\n')
    >>> len(fingerprint(spec, net, load())), fingerprint(spec, net, load()) == fingerprint(spec, net, load())
    (64, True)
    """
    source = Path(spec.file).read_text() if spec.file and Path(spec.file).is_file() else spec.document.model_dump_json()
    shapes = sorted((name, tuple(t.shape)) for name, t in model.state_dict().items())
    example = spec.document.example
    # the example inputs' shapes, which an override (inputs=, --inputs) changes without changing the file
    inputs = {k: list(v.shape) for k, v in example.inputs.items()} if example is not None else {}
    record = {"spec": source, "inputs": inputs, "class": f"{type(model).__module__}.{type(model).__qualname__}",
              "config": model_config(model), "timm": getattr(model, "symdsl_timm", None), "shapes": shapes,
              "plugins": list(registries.plugins), "symdsl": __version__}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


def verify_spec(spec: Spec, model: torch.nn.Module, registries: Registries, *, seed: int = 0) -> str:
    """Run the static and numeric checks of ``spec`` on (a copy of) ``model`` unless a passing result
    is cached; raise :class:`~symdsl.errors.SymdslError` naming the first problem when one fails.

    Returns ``"cached"`` or ``"checked"``.
    """
    key = fingerprint(spec, model, registries)
    marker = checks_cache() / f"{key}.json"
    if marker.is_file():
        return "cached"
    if spec.document.example is None or not spec.document.example.inputs:
        raise SymdslError(f"cannot verify spec '{spec.name}': it declares no example.inputs to run the model on; add "
                          "them (see docs/spec-language.md, 'example'), or align without the check: verify=False "
                          "(command line: --no-verify)")
    static = static_check(spec, model, registries=registries, seed=seed)        # checks a copy
    if not static.ok:
        first = static.findings[0]
        raise SymdslError(f"spec '{spec.name}' fails the static check on {type(model).__name__} "
                          f"({len(static.findings)} violation(s)); the first: {first.op} at node {first.node}: "
                          f"{first.message}. Run `symdsl check {spec.name} --model A` for the report; fix the spec, or "
                          "align anyway with verify=False (command line: --no-verify)")
    numeric = numeric_check(spec, model, registries=registries, seed=seed)      # perturbs a copy
    if not numeric.ok:
        broken = ", ".join(numeric.failed_sites[:5]) or "canonicalization"
        raise SymdslError(f"spec '{spec.name}' fails the numeric check on {type(model).__name__}: {broken} "
                          f"(tolerance {numeric.tolerance:g}). Run `symdsl check {spec.name} --model A` for the "
                          "report; fix the spec, or align anyway with verify=False (command line: --no-verify)")
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"spec": spec.name, "model": type(model).__name__, "static_nodes": static.nodes,
                                      "tolerance": numeric.tolerance, "precision": numeric.precision}) + "\n")
    except OSError:
        pass                      # an unwritable cache only costs the check again next time
    return "checked"
