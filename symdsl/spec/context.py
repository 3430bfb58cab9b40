"""The state one resolution shares between its steps, and how it reports problems.

Binding a spec to a model is split by concern (:mod:`.config` dims, :mod:`.expand` templates,
:mod:`.sites`, :mod:`.bind`, :mod:`.steps`, :mod:`.coverage`); each is a set of functions
taking a :class:`ResolveContext`, and :mod:`.resolve` runs them in order. The context only
carries what they share: the inputs, what earlier steps found, and the problems so far.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch

from ..errors import Problem, SpecError
from ..registry import Registries
from .binding import SiteDef
from .load import Spec
from .schema import Head


class ResolveContext:
    """Inputs and intermediate results of binding one spec to one form of one model.

    Every problem is collected (:meth:`problem`) rather than raised, so that one run reports
    all of a spec's mistakes; :meth:`fail_if_problems` raises them together where a later step
    would only produce follow-up errors.

    >>> from symdsl.plugins import load
    >>> from symdsl.spec import load_spec_text
    >>> spec = load_spec_text("symdsl: 1\\nname: tiny\\n")
    >>> context = ResolveContext(spec, None, {}, {}, load())
    >>> context.problem(("name",), "names must be long", "write a longer name")
    >>> context.problem(("name",), "names must be long")   # reported once only
    >>> context.fail_if_problems()
    Traceback (most recent call last):
    ...
    symdsl.errors.SpecError: 1 problem in spec:
      <spec>:2:1: name: names must be long
        hint: write a longer name
    """

    def __init__(self, spec: Spec, model: torch.nn.Module | None, state: Mapping[str, torch.Tensor],
                 config: Mapping[str, Any], registries: Registries):
        self.spec, self.document, self.source = spec, spec.document, spec.source
        self.kinds, self.canonicalizers = registries.group_kinds, registries.canonicalizers
        self.model, self.state, self.config = model, state, dict(config)
        self.problems: list[Problem] = []
        self._reported: set[tuple] = set()
        # filled in by the steps, in this order
        self.functions: Mapping[str, Callable] = {}   # shape/attr/len for dim expressions (config.resolve_dims)
        self.dims: dict[str, int] = {}
        self.ranges: dict[str, int] = {}               # template variable -> range (the 'repeat' section)
        self.form = "single"                            # "single", "original" or "canonical"
        self.prefix = ""                                # the backbone prefix the model's names carry
        self.head_models: dict[str, Head] = {}          # heads with ${prefix} filled in
        self.sites: dict[str, SiteDef] = {}
        self.used_sites: set[str] = set()               # sites some tensor pattern names
        self.empty_sites: set[str] = set()              # sites of size 0: the parts naming them are empty
        self.dropped: list[tuple[tuple, str, dict]] = []  # entries skipped for template errors
        self.ties_incomplete = False  # a tie group or canonicalize step was skipped for an error
        self._modules: set[str] | None = None

    def problem(self, path, message, hint=""):
        """Record a problem at ``path`` (a key path into the spec file) for the final SpecError."""
        key = (tuple(path), message)
        if key in self._reported:  # a template entry expands to many items: report each problem once
            return
        self._reported.add(key)
        self.problems.append(self.source.problem(tuple(path), message, hint))

    def fail_if_problems(self):
        """Raise every problem so far as one SpecError (nothing when there is none)."""
        if self.problems:
            raise SpecError(self.problems)

    def module_names(self) -> set[str]:
        """Every module path the state dict's names imply (``a.b.weight`` -> ``a``, ``a.b``)."""
        if self._modules is None:
            self._modules = set()
            for key in self.state:
                parts = key.split(".")
                self._modules.update(".".join(parts[:i]) for i in range(1, len(parts)))
        return self._modules


def dotted(path: tuple) -> str:
    """A key path as the user would write it.

    >>> dotted(("heads", "lm", "tensors", 0))
    'heads.lm.tensors.0'
    """
    return ".".join(map(str, path))
