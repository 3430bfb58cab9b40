"""Bind a spec to a concrete model: evaluate dims, expand templates, bind every axis, check coverage.

Resolution runs once per (spec, model configuration); the result is reused for every
transform applied to models of that configuration.
"""
from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, fields
from typing import Any, Mapping

import torch

from ..canon.base import canonicalize
from ..errors import Problem, SpecError, UnknownNameError, UsageError, suggest
from ..registry import Registries
from .binding import BoundAxis, BoundFactor, CanonStep, ResolvedSpec, SiteDef, TensorBinding
from .expr import ExprError, evaluate
from .load import Spec
from .pattern import PatternError, parse_pattern
from .schema import Head
from .template import substitute_all, combos, expand_list, substitute, variables


def model_config(model: torch.nn.Module) -> dict[str, Any]:
    """The configuration values a spec's dims may read: a transformers config as a dict, else {}."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        return config.to_dict()
    return dict(getattr(model, "symdsl_config", {}) or {})


def _functions(model: torch.nn.Module | None, state: Mapping[str, torch.Tensor], prefixes: list[str]):
    def find(name: str) -> str:
        if not isinstance(name, str):
            raise ExprError(f"expected a tensor name in quotes, got {name!r}")
        for prefix in prefixes or [""]:
            if prefix + name in state:
                return prefix + name
        raise ExprError(f"no tensor '{name}' in the model{suggest(name, state)}")

    def module(path: str):
        if not isinstance(path, str):
            raise ExprError(f"expected a module path in quotes, got {path!r}")
        if model is None:
            raise ExprError("needs the model itself, not only a state dict")
        for prefix in prefixes or [""]:
            try:
                return model.get_submodule((prefix + path).rstrip("."))
            except AttributeError:
                continue
        names = [n for n, _ in model.named_modules() if n]
        raise ExprError(f"no module '{path}' in the model{suggest(path, names)}")

    def shape(name: str, axis: int) -> int:
        tensor = state[find(name)]
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise ExprError(f"shape('{name}', axis): the axis must be an integer, got {axis!r}")
        if not -tensor.dim() <= axis < tensor.dim():
            raise ExprError(f"shape('{name}', {axis}): the tensor has {tensor.dim()} axes (shape {tuple(tensor.shape)})")
        return int(tensor.shape[axis])

    def attr(path: str):
        if not isinstance(path, str):
            raise ExprError(f"expected 'module.path.attribute' in quotes, got {path!r}")
        owner, _, attribute = path.rpartition(".")
        if attribute.startswith("__"):
            raise ExprError(f"attr('{path}'): special attributes such as '{attribute}' cannot be read")
        target = module(owner) if owner else model
        if target is None or not hasattr(target, attribute):
            raise ExprError(f"module '{owner}' has no attribute '{attribute}'"
                            f"{suggest(attribute, [a for a in vars(target) if not a.startswith('_')]) if target is not None else ''}")
        value = getattr(target, attribute)
        if callable(value):
            raise ExprError(f"attr('{path}') is a method or module, not a value")
        return value

    def length(path: str) -> int:
        target = module(path)
        if not hasattr(target, "__len__"):
            raise ExprError(f"len('{path}'): module '{path}' ({type(target).__name__}) has no length; "
                            "len() counts the entries of a ModuleList or Sequential")
        return len(target)

    return {"shape": shape, "attr": attr, "len": length}


def detect_ties(state: Mapping[str, torch.Tensor]) -> list[list[str]]:
    """Groups of state-dict names that share one storage (tied weights).

    Tensors without data (device ``meta``) all report storage address 0, so for them only the very
    same tensor object counts as shared (``state_dict(keep_vars=True)`` keeps tied parameters identical).
    """
    groups: dict[tuple, list[str]] = {}
    for name, tensor in state.items():
        if tensor.numel() == 0:
            continue
        if tensor.device.type == "meta":
            key: tuple = ("meta", id(tensor))
        else:
            key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
                   tuple(tensor.stride()))
        groups.setdefault(key, []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def _template_strings(value: Any):
    """Every string inside a value (keys included), for template checks."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _template_strings(item)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _template_strings(key)
            yield from _template_strings(item)
    elif hasattr(value, "model_dump"):
        yield from _template_strings(value.model_dump(exclude={"doc"}))


def _template_vars(value: Any) -> list[str]:
    return list(dict.fromkeys(v for text in _template_strings(value) for v in variables(text)))


def _dotted(path: tuple) -> str:
    return ".".join(map(str, path))


class _Resolver:
    def __init__(self, spec: Spec, model: torch.nn.Module | None, state: Mapping[str, torch.Tensor],
                 config: Mapping[str, Any], registries: Registries):
        self.spec, self.m, self.src = spec, spec.model, spec.source
        self.kinds, self.canonicalizers = registries.group_kinds, registries.canonicalizers
        self.model, self.state, self.config = model, state, dict(config)
        self.problems: list[Problem] = []
        self._reported: set[tuple] = set()
        self.dims: dict[str, int] = {}
        self.ranges: dict[str, int] = {}
        self._modules: set[str] | None = None
        self.dropped: list[tuple[tuple, str, dict]] = []  # entries skipped for template errors
        self.ties_incomplete = False  # a tie group or canonicalize step was skipped for an error
        self.form = "single"

    def problem(self, path, message, hint=""):
        key = (tuple(path), message)
        if key in self._reported:  # a template entry expands to many items: report each problem once
            return
        self._reported.add(key)
        self.problems.append(self.src.problem(tuple(path), message, hint))

    def fail_if_problems(self):
        if self.problems:
            raise SpecError(self.problems)

    # -- dims and template ranges -------------------------------------------------
    def eval_expr(self, expr, path):
        try:
            return evaluate(expr, {**self.config, **self.dims}, self.functions)
        except ExprError as exc:
            self.problem(path, str(exc), "expressions read the model config and the dims above; "
                         "functions: shape, attr, len, min, max")
            return None

    def resolve_dims(self):
        self.functions = _functions(self.model, self.state, list(self.m.prefix))
        for name, expr in self.m.dims.items():
            value = self.eval_expr(expr, ("dims", name))
            if value is not None:
                if value < 0:
                    self.problem(("dims", name), f"dimension '{name}' = {expr!r} is {value}, a negative size")
                    continue
                self.dims[name] = value
        for var, expr in self.m.repeat.items():
            value = self.eval_expr(expr, ("repeat", var))
            if value is not None:
                if value < 0:
                    self.problem(("repeat", var), f"range {value} is negative")
                self.ranges[var] = max(value, 0)
        self.fail_if_problems()

    # -- templates ----------------------------------------------------------------
    def check_template(self, value: Any, path: tuple, bound: Mapping[str, Any] | None = None,
                       key: str | None = None) -> bool:
        """True when every ``${v}`` in value is declared in 'repeat' (and, for a mapping entry's value,
        also appears in its key ``key``, whose variables are ``bound``); else report and return False."""
        ok = True
        for name in _template_vars(value):
            if bound is not None and name in bound:
                continue
            if name == "prefix" and path[:1] != ("heads",):
                self.problem(path, "'${prefix}' is only for head entries; backbone names get the prefix "
                             "automatically", "write the name without the prefix")
            elif name not in self.ranges:
                self.problem(path, f"template variable '${{{name}}}' is not declared in 'repeat'"
                             f"{suggest(name, self.ranges)}", "declare it, e.g. repeat: {i: L}")
            elif key is not None:
                self.problem(path, f"template variable '${{{name}}}' is used in the value but not in the key "
                             f"'{key}', so it has no value here", f"add '${{{name}}}' to the key or drop it from the value")
            else:
                continue
            ok = False
        return ok

    def expand_keys(self, mapping: Mapping[str, Any], section: tuple,
                    fixed: Mapping[str, str] | None = None) -> list[tuple[str, Any, tuple, dict]]:
        """(expanded key, value, origin path, env) for each template key of a mapping.

        ``fixed`` holds string-valued variables (``prefix`` in heads) substituted as they are.
        """
        fixed = dict(fixed or {})
        out = []
        for key, value in mapping.items():
            origin = section + (key,)
            names = [n for n in variables(key) if n not in fixed]
            if not self.check_template(names and [key] or [], origin, bound=fixed) or \
                    not self.check_template(value, origin, bound={**fixed, **dict.fromkeys(names)}, key=key):
                self.dropped.append((section, key, fixed))
                continue
            for env in combos(names, self.ranges):
                env = {**fixed, **env}
                out.append((substitute(key, env), value, origin, env))
        return out

    def expand_items(self, items: list, section: tuple) -> list[tuple[Any, tuple]]:
        """(expanded item, origin path) for each entry of a list section (invariant names, tie groups)."""
        out = []
        for index, item in enumerate(items):
            origin = section + (index,)
            if self.check_template(item, origin):
                out.extend((value, origin) for value in expand_list([item], self.ranges))
            elif isinstance(item, str):
                self.dropped.append((section, item, {}))
            else:
                self.ties_incomplete = True
        return out

    # -- sites ----------------------------------------------------------------------
    def resolve_sites(self, heads: list[str]) -> dict[str, SiteDef]:
        raw = {}
        declared = self.expand_keys(self.m.sites, ("sites",))
        for head in heads:
            declared += self.expand_keys(self.m.heads[head].sites, ("heads", head, "sites"), {"prefix": self.prefix})
        for name, site, origin, env in declared:
            if name in raw:
                self.problem(origin, f"site '{name}' is declared twice (also at {_dotted(raw[name][5])})")
                continue
            try:
                kind = self.kinds.lookup(site.group)
            except UnknownNameError as exc:
                self.problem(origin + ("group",), str(exc))
                continue
            options = {"preserve": site.preserve} if site.preserve is not None else {}
            try:
                kind.validate_options(options)
            except ValueError as exc:
                self.problem(origin + ("preserve",), str(exc), "'preserve: ones' is an option of orthogonal sites")
            size = self.eval_expr(substitute_all(site.size, env), origin + ("size",))
            size_in = (self.eval_expr(substitute_all(site.size_in, env), origin + ("size_in",))
                       if site.size_in is not None else size)
            if size is None or size_in is None:
                continue
            bad = False
            for key, value in (("size", size), ("size_in", size_in)):
                if value < 1 and (key == "size" or site.size_in is not None):
                    self.problem(origin + (key,), f"site '{name}' has {key} {value}; a site's size must be positive")
                    bad = True
            if bad:
                continue
            if kind.square and size_in != size:
                self.problem(origin + ("size_in",), f"group '{kind.name}' is square; size_in must equal size")
            elif not kind.square and size < size_in:
                self.problem(origin + ("size",), f"group '{kind.name}' maps size_in {size_in} onto size {size}; it can "
                             "only widen (size >= size_in)", "swap size and size_in, or align the other model into this one")
            per = substitute(site.per, env) if site.per else None
            raw[name] = (kind, size, size_in, per, options, origin)
        sites = {}
        for name, (kind, size, size_in, per, options, origin) in raw.items():
            per_size = None
            if per is not None:
                if per in raw:
                    parent = raw[per]
                    if not parent[0].permutes_positions:
                        self.problem(origin + ("per",), f"'per: {per}' must name a permutation site or a dimension, "
                                     f"but '{per}' is {parent[0].name}",
                                     "elements are indexed by the parent's positions, which only a permutation keeps apart")
                    per_size = parent[1]
                elif per in self.dims:
                    per_size = self.dims[per]
                else:
                    self.problem(origin + ("per",), f"'per: {per}' names no site or dimension"
                                 f"{suggest(per, list(raw) + list(self.dims))}")
                    continue
            sites[name] = SiteDef(name, kind, size, size_in, per, per_size, options, origin)
        return sites

    # -- tensors ----------------------------------------------------------------------
    def bind_pattern(self, name: str, pattern: str, origin: tuple, shape: tuple | None) -> TensorBinding | None:
        try:
            axes = parse_pattern(pattern)
        except PatternError as exc:
            self.problem(origin, f"{exc} (column {exc.column} of the pattern)")
            return None
        if shape is not None and len(axes) != len(shape):
            self.problem(origin, f"pattern {pattern!r} has {len(axes)} axes but tensor '{name}' has shape "
                         f"{tuple(shape)} ({len(shape)} axes)", "write one pattern entry per axis; '_' for unbound axes")
            return None
        bound_axes = []
        ok = True
        for index, axis in enumerate(axes):
            parts = []
            for part in axis.parts:
                factors = []
                for f in part:
                    factor = self.bind_factor(f, origin, name)
                    if factor is None:
                        ok = False
                        continue
                    factors.append(factor)
                parts.append(factors)
            if not ok:
                continue
            axis_size = shape[index] if shape is not None else None
            parts = self.infer_unknown(parts, axis_size, name, index, origin)
            if parts is None:
                ok = False
                continue
            bound_axes.append(BoundAxis(tuple(tuple(p) for p in parts)))
        if not ok:
            return None
        return TensorBinding(name, tuple(bound_axes), pattern, origin)

    def bind_factor(self, f, origin, tensor) -> BoundFactor | None:
        if f.name is None:
            return BoundFactor(f.literal if f.literal is not None else -1)
        if f.name in self.sites:
            site = self.sites[f.name]
            self.used_sites.add(f.name)
            return BoundFactor(site.size_in, site=f.name, dual=f.dual)
        if f.name in self.dims:
            if f.dual:
                self.problem(origin, f"'{f.name}' is a dimension, not a site: it cannot be dual (drop the ')")
                return None
            return BoundFactor(self.dims[f.name], dim=f.name)
        self.problem(origin, f"name '{f.name}' in the pattern of '{tensor}' is neither a site nor a dimension"
                     f"{suggest(f.name, list(self.sites) + list(self.dims))}",
                     "declare it under 'sites' or 'dims'")
        return None

    def infer_unknown(self, parts, axis_size, tensor, index, origin):
        unknown = [(i, j) for i, p in enumerate(parts) for j, f in enumerate(p) if f.size < 0]
        if not unknown:
            total = sum(math.prod(f.size for f in p) for p in parts)
            if axis_size is not None and total != axis_size:
                detail = " + ".join("*".join(str(f.size) for f in p) for p in parts)
                self.problem(origin, f"axis {index} of '{tensor}' has size {axis_size}, but the pattern gives {detail} = {total}",
                             "check the dims and the factor order of this axis")
                return None
            return parts
        if len(unknown) > 1 or axis_size is None and len(parts) > 1:
            self.problem(origin, f"axis {index} of '{tensor}' has more than one '_' factor whose size is unknown",
                         "give all but one factor a size (a dimension name or an integer)")
            return None
        if axis_size is None:
            return parts  # an output pattern: '_' takes any size
        i, j = unknown[0]
        known = sum(math.prod(f.size for f in p) for k, p in enumerate(parts) if k != i)
        rest = math.prod(f.size for k, f in enumerate(parts[i]) if k != j)
        size, remainder = divmod(axis_size - known, rest) if rest else (0, 1)
        if remainder or size <= 0:
            self.problem(origin, f"axis {index} of '{tensor}' (size {axis_size}) does not factor as the pattern says")
            return None
        parts[i][j] = BoundFactor(size)
        return parts

    def check_per(self, binding: TensorBinding):
        factors = [f for a in binding.axes for p in a.parts for f in p]
        for f in factors:
            site = self.sites.get(f.site) if f.site else None
            if site is None or site.per is None:
                continue
            if site.per in self.sites:
                present = any(g.site == site.per for g in factors)
            else:
                present = any(g.dim == site.per for g in factors)
            if not present:
                self.problem(binding.origin, f"site '{site.name}' is declared per '{site.per}', but tensor "
                             f"'{binding.name}' has no '{site.per}' factor to index its elements",
                             f"write the axis as a composite, e.g. ({site.per} {site.name})")

    def in_canonical_form(self) -> bool:
        """Is the model already in the spec's canonical form? True when every tensor that only the
        ``canonical`` section names exists in it (under one of the prefixes)."""
        self.resolve_dims()
        section = self.m.canonical
        original = {n for n, *_ in self.expand_keys(self.m.tensors, ("tensors",))}
        original |= {n for n, _ in self.expand_items(list(self.m.invariant), ("invariant",)) if isinstance(n, str)}
        new = [n for n, *_ in self.expand_keys(section.tensors, ("canonical", "tensors"))]
        new += [n for n, _ in self.expand_items(list(section.invariant), ("canonical", "invariant")) if isinstance(n, str)]
        only = [n for n in new if n not in original]
        return bool(only) and any(all(p + n in self.state for n in only) for p in self.m.prefix)

    def overlay(self, entries: list, invariant_src: list, extra: list) -> tuple[list, list]:
        """The canonical form's backbone entries: those of 'tensors'/'invariant' whose tensors survive
        canonicalization, then the 'canonical' section's, which take precedence on the same name."""
        new = [(self.prefix + n, substitute(v, env), o) for n, v, o, env in extra]
        new_invariant = [(self.prefix + n, o)
                         for n, o in self.expand_items(list(self.m.canonical.invariant), ("canonical", "invariant"))]
        override = {n for n, *_ in new} | {n for n, _ in new_invariant}
        kept = [e for e in entries if e[0] in self.state and e[0] not in override]
        kept_invariant = [e for e in invariant_src if e[0] in self.state and e[0] not in override]
        return kept + new, kept_invariant + new_invariant

    def resolve(self, form: str = "single", steps: list[CanonStep] | None = None) -> ResolvedSpec:
        """Bind one form of the model.

        ``form`` is ``single`` (no 'canonical' section: one set of bindings for both forms),
        ``original`` (a spec with a 'canonical' section, on the model before canonicalization:
        the bindings the canonicalize steps read, no coverage rule) or ``canonical`` (the model
        after canonicalization: surviving 'tensors' entries overlaid with 'canonical').
        ``steps`` are the already expanded steps when the canonical form was made here from the
        original model; without them the steps are expanded without checking their names,
        which refer to the original model.
        """
        self.form = form
        self.resolve_dims()
        self.used_sites: set[str] = set()
        backbone = self.expand_keys(self.m.tensors, ("tensors",))
        extra = self.expand_keys(self.m.canonical.tensors, ("canonical", "tensors")) if form == "canonical" else []
        prefix = self.prefix = self.choose_prefix([name for name, *_ in (extra or backbone)])
        fixed = {"prefix": prefix}
        # list sections of heads (invariant, tied, canonicalize) with ${prefix} filled in; keys are
        # expanded from the heads as written, so problems point at the right line
        self.head_models = {name: Head.model_validate(substitute_all(h.model_dump(), fixed))
                            for name, h in self.m.heads.items()}
        heads = self.present_heads()
        self.sites = self.resolve_sites(heads)
        self.fail_if_problems()

        entries = [(prefix + n, substitute(v, env), o) for n, v, o, env in backbone]
        invariant_src = [(prefix + n, o) for n, o in self.expand_items(list(self.m.invariant), ("invariant",))]
        tied = [([prefix + n for n in g], o) for g, o in self.expand_items([list(g) for g in self.m.tied], ("tied",))]
        if form == "canonical":
            entries, invariant_src = self.overlay(entries, invariant_src, extra)
        given_steps = steps
        steps = self.expand_steps(self.m.canonicalize, prefix, ("canonicalize",)) if given_steps is None else []
        outputs_src = [(n, v, ("outputs", n)) for n, v in self.m.outputs.items()]
        head_steps: list[CanonStep] = []
        for head in heads:
            h = self.head_models[head]
            base = ("heads", head)
            entries += [(n, substitute(v, env), o)
                        for n, v, o, env in self.expand_keys(self.m.heads[head].tensors, base + ("tensors",), fixed)]
            invariant_src += self.expand_items(list(h.invariant), base + ("invariant",))
            tied += self.expand_items([list(g) for g in h.tied], base + ("tied",))
            # a head's steps run before the backbone's: they untie what the backbone's steps would change
            if given_steps is None:
                head_steps += self.expand_steps(h.canonicalize, "", base + ("canonicalize",))
            outputs_src += [(n, v, base + ("outputs", n)) for n, v in h.outputs.items()]

        steps = head_steps + steps if given_steps is None else list(given_steps)
        tensors: dict[str, TensorBinding] = {}
        attempted: set[str] = set()  # bound, even if the binding had errors (no cascade of coverage errors)
        absent: dict[tuple, list[str]] = {}
        for name, pattern, origin in entries:
            if name in tensors:
                self.problem(origin, f"tensor '{name}' is bound twice (also at {_dotted(tensors[name].origin)})",
                             "keep one of the two entries")
                continue
            if name not in self.state:
                absent.setdefault(origin, []).append(name)
                continue
            binding = self.bind_pattern(name, pattern, origin, tuple(self.state[name].shape))
            attempted.add(name)
            if binding is not None:
                self.check_per(binding)
                tensors[name] = binding
        for origin, names in absent.items():
            more = f" (and {len(names) - 1} more names from this entry)" if len(names) > 1 else ""
            self.problem(origin, f"tensor '{names[0]}' is not in the model{suggest(names[0], self.state)}{more}",
                         f"backbone names are looked up under the prefix '{prefix}'" if prefix and origin[0] == "tensors"
                         else "")
        invariant: dict[str, tuple] = {}
        for name, origin in invariant_src:
            if name not in self.state:
                self.problem(origin, f"invariant tensor '{name}' is not in the model{suggest(name, self.state)}")
                continue
            if name in tensors or name in attempted:
                where = _dotted(tensors[name].origin) if name in tensors else "tensors"
                self.problem(origin, f"tensor '{name}' is both bound (at {where}) and invariant",
                             "a tensor is either bound to sites or invariant: remove one of the two entries")
            invariant.setdefault(name, origin)
        outputs = {}
        for name, pattern, origin in outputs_src:
            binding = self.bind_pattern(name, pattern, origin, None)
            if binding is not None:
                outputs[name] = binding

        if form != "original":   # what the canonicalize steps consume need not be bound
            self.check_coverage(attempted, invariant)
        self.check_ties(tensors, invariant, tied, steps)
        for name, site in self.sites.items():
            if form != "original" and name not in self.used_sites and not self.problems:
                self.problem(site.origin, f"site '{name}' is declared but no tensor uses it",
                             "bind it in some tensor pattern, or remove it")
        self.fail_if_problems()
        return ResolvedSpec(self.spec, self.dims, prefix, heads, self.sites, tensors, set(invariant),
                            [g for g, _ in tied], steps, outputs)

    def choose_prefix(self, names: list[str]) -> str:
        if not self.m.prefix:
            self.problem(("prefix",), "'prefix' lists no prefix", "write prefix: [\"\"] (or leave it out) for none")
            self.fail_if_problems()
        best = None
        for prefix in self.m.prefix:
            missing = [n for n in names if prefix + n not in self.state]
            if not missing:
                return prefix
            if best is None or len(missing) < len(best[1]):
                best = (prefix, missing)
        prefix, missing = best
        if 2 * len(missing) <= len(names) or not names:
            return prefix  # a few names are wrong: each is reported where it is written
        # most of the backbone is absent: the wrong spec for this model, or a wrong prefix
        shown = ", ".join(f"'{prefix + n}'" for n in missing[:3]) + (" ..." if len(missing) > 3 else "")
        first = prefix + missing[0]
        self.problem(("prefix",) if "prefix" in self.m.model_fields_set else ("tensors",),
                     f"{len(missing)} of the spec's {len(names)} tensors are not in the model: {shown}"
                     f"{suggest(first, self.state)}",
                     "is this the right spec for the model? `symdsl specs` lists specs and what they match; "
                     f"'prefix' lists alternative name prefixes (tried: {', '.join(repr(p) for p in self.m.prefix)})")
        self.fail_if_problems()
        return prefix

    def present_heads(self) -> list[str]:
        present = []
        for head, h in self.head_models.items():
            names = [n for n, *_ in self.expand_keys(self.m.heads[head].tensors, ("heads", head, "tensors"),
                                                     {"prefix": self.prefix})]
            names += [n for n, _ in self.expand_items(list(h.invariant), ("heads", head, "invariant"))]
            found = [n for n in names if n in self.state]
            if found and len(found) != len(names):
                missing = [n for n in names if n not in self.state]
                self.problem(("heads", head), f"head '{head}' is partly present: the model has {found[:3]} but not "
                             f"{missing[:3]}",
                             "a head's tensors must all exist in the model or none")
            elif found:
                present.append(head)
        return present

    def module_names(self) -> set[str]:
        if self._modules is None:
            self._modules = set()
            for key in self.state:
                parts = key.split(".")
                self._modules.update(".".join(parts[:i]) for i in range(1, len(parts)))
        return self._modules

    def expand_steps(self, steps: list[dict], prefix: str, origin: tuple) -> list[CanonStep]:
        out = []
        for index, step in enumerate(steps):
            path = origin + (index,)
            ok_before = len(self.problems)
            out += self.expand_step(step, prefix, path)
            if len(self.problems) > ok_before:
                self.ties_incomplete = True  # the step might have been an 'untie'
        return out

    def expand_step(self, step: Any, prefix: str, path: tuple) -> list[CanonStep]:
        if not isinstance(step, dict) or len(step) != 1:
            self.problem(path, "a canonicalize step is a mapping with one key, the canonicalizer name",
                         "e.g. - untie: [lm_head.weight, transformer.wte.weight]")
            return []
        (name, args), = step.items()
        try:
            canon = self.canonicalizers[name]
        except KeyError:
            known = self.canonicalizers
            self.problem(path + (name,), f"unknown canonicalizer '{name}'{suggest(str(name), known)}",
                         f"known canonicalizers: {', '.join(sorted(known))}")
            return []
        path = path + (name,)
        fields = getattr(getattr(canon, "Args", None), "model_fields", None)
        if fields is not None:
            allowed = ", ".join(fields)
            if isinstance(args, dict):
                unknown = [k for k in args if k not in fields]
                for key in unknown:
                    self.problem(path + (key,), f"{name}: unknown argument '{key}'{suggest(str(key), fields)}",
                                 f"arguments of {name}: {allowed}")
                if unknown:
                    return []
            elif not (isinstance(args, list) and "names" in fields):
                takes = "a list of names or a mapping" if "names" in fields else "a mapping"
                self.problem(path, f"{name} takes {takes} of arguments ({allowed}), got {type(args).__name__} {args!r}",
                             f"e.g. - {name}: {{{', '.join(f'{f}: ...' for f in fields)}}}")
                return []
        if not self.check_template(args, path):
            return []
        out, absent = [], {}
        for concrete in expand_list([args], self.ranges):
            try:
                prepared = canon.prepare(concrete, prefix)
            except ValueError as exc:
                self.problem(path, str(exc))
                continue
            for field, item in self.unknown_step_names(canon, prepared):
                absent.setdefault(field, []).append(item)
            site = getattr(prepared, "site", None)
            if isinstance(site, str) and site not in self.sites:
                self.problem(path + (("site",) if isinstance(args, dict) else ()),
                             f"{name}: site '{site}' is not declared{suggest(site, self.sites)}")
            out.append(CanonStep(name, prepared, path, canon))
        for field, items in absent.items():
            more = f" (and {len(items) - 1} more from this step)" if len(items) > 1 else ""
            known = list(self.state) + sorted(self.module_names())
            self.problem(path + ((field,) if isinstance(args, dict) else ()),
                         f"{name}: '{items[0]}' ({field}) is neither a tensor nor a module of the model"
                         f"{suggest(items[0], known)}{more}",
                         f"names here are looked up under the prefix '{prefix}'" if prefix else "")
        return out

    def unknown_step_names(self, canon, args) -> list[tuple[str, str]]:
        """(field, name) for each name in a step's arguments that is neither a tensor nor a module of the model."""
        if getattr(canon, "changes_architecture", False) or self.form == "canonical":
            return []  # such a step may name what it creates; on a canonical model the names are gone
        found = []
        for field in getattr(canon, "name_fields", ()):
            value = getattr(args, field, None)
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, str) and item not in self.state and item not in self.module_names():
                    found.append((field, item))
        return found

    def check_coverage(self, tensors, invariant):
        # entries skipped for a template error would have covered the names they match: no follow-up errors
        skipped = []
        for section, text, fixed in self.dropped:
            if section[-1] in ("tensors", "invariant"):
                name = substitute(text, fixed) if section[0] == "heads" else self.prefix + text
                parts = re.split(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}", name)
                skipped.append(re.compile(".+".join(re.escape(p) for p in parts)))
        missing = [n for n in self.state if n not in tensors and n not in invariant
                   and not any(r.fullmatch(n) for r in skipped)]
        canonical = self.form == "canonical"
        for name in missing:
            if canonical:
                self.problem(("canonical", "tensors"), f"tensor '{name}' {tuple(self.state[name].shape)} of the "
                             "canonical form (after the canonicalize steps) is neither bound nor declared invariant",
                             f"add '{name}' under 'canonical: tensors' with an axis pattern, or under "
                             "'canonical: invariant' if no symmetry touches it")
                continue
            self.problem(("tensors",), f"model tensor '{name}' {tuple(self.state[name].shape)} is neither bound "
                         "nor declared invariant", f"add '{name}' under 'tensors' with an axis pattern, "
                         "or under 'invariant' if no symmetry touches it")

    def check_ties(self, tensors, invariant, tied, steps):
        actual = detect_ties(self.state)
        declared = [set(g) for g, _ in tied] + [set(s.args.names) for s in steps if s.name == "untie"]
        for group in actual if not self.ties_incomplete else []:
            if not any(set(group) <= d for d in declared):
                where = next((tensors[n].origin for n in group if n in tensors),
                             next((invariant[n] for n in group if n in invariant), ("tied",)))
                self.problem(where, f"tensors {group} are one shared parameter in the model but the spec does not say so",
                             "add them as one group under 'tied' (they must transform alike), "
                             "or 'untie' them in 'canonicalize'")
        for group, origin in tied:
            missing = [n for n in group if n not in self.state]
            if missing:
                self.problem(origin, f"tied tensor '{missing[0]}' is not in the model{suggest(missing[0], self.state)}")
                continue
            if len(set(group)) < 2:
                self.problem(origin, f"a tie group needs at least two different names, got {group}")
                continue
            if not any(set(group) <= set(a) for a in actual):
                self.problem(origin, f"tensors {group} are declared tied but are separate parameters in the model",
                             "remove this group from 'tied'")
                continue
            bindings = [tensors[n] for n in group if n in tensors]
            moving = [b for b in bindings if b.sites()]
            fixed = [n for n in group if n in invariant]
            if moving and fixed:
                self.problem(origin, f"tied tensors '{moving[0].name}' ({moving[0].pattern!r}) and '{fixed[0]}' "
                             "(invariant) would transform differently",
                             "one shared parameter transforms once: bind every name of the group alike")
            for other in bindings[1:]:
                if not _same_action(bindings[0], other, self.sites):
                    self.problem(other.origin, f"tied tensors '{bindings[0].name}' ({bindings[0].pattern!r}) and "
                                 f"'{other.name}' ({other.pattern!r}) would transform differently",
                                 "tied tensors need the same sites per axis (variance may differ only on permutation/orthogonal sites)")


def _same_action(a: TensorBinding, b: TensorBinding, sites: Mapping[str, SiteDef]) -> bool:
    if len(a.axes) != len(b.axes):
        return False
    for x, y in zip(a.axes, b.axes):
        if len(x.parts) != len(y.parts):
            return False
        for p, q in zip(x.parts, y.parts):
            if len(p) != len(q):
                return False
            for f, g in zip(p, q):
                if (f.site, f.size) != (g.site, g.size):
                    return False
                if f.site and f.dual != g.dual and not sites[f.site].kind.self_dual:
                    return False
    return True



def resolve(spec: Spec, model: torch.nn.Module | None = None, *, registries: Registries,
            state: Mapping[str, torch.Tensor] | None = None, config: Mapping[str, Any] | None = None) -> ResolvedSpec:
    """Bind ``spec`` to a model (or a state dict plus config). Raises SpecError listing every problem.

    ``registries`` supplies the group kinds and canonicalizers the spec names
    (``symdsl.plugins.load()``).

    >>> from symdsl.plugins import load
    >>> from symdsl.spec import load_spec_text, resolve
    >>> import torch
    >>> spec = load_spec_text('''
    ... symdsl: 1
    ... name: mlp
    ... dims: {d: 4}
    ... sites: {hidden: {group: permutation, size: d}}
    ... tensors: {0.weight: "hidden _", 0.bias: hidden, 2.weight: "_ hidden'"}
    ... invariant: [2.bias]
    ... ''')
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    >>> sorted(resolve(spec, net, registries=load()).sites)
    ['hidden']
    """
    if model is not None and not isinstance(model, torch.nn.Module):
        raise UsageError(f"resolve needs a torch.nn.Module, got {type(model).__name__}")
    if state is None:
        if model is None:
            raise UsageError("resolve needs a model or a state dict")
        state = model.state_dict(keep_vars=True)
    if config is None:
        config = model_config(model) if model is not None else {}
    if spec.model.canonical is None:
        return _Resolver(spec, model, state, config, registries).resolve()
    return _resolve_two_forms(spec, model, state, config, registries)


@dataclass
class TwoFormSpec(ResolvedSpec):
    """A resolved spec with a ``canonical`` section: ``tensors``/``invariant`` are the canonical form's.

    ``original`` holds the bindings the canonicalize steps read (the ``tensors`` section on
    the original model); it is None when the model was already in canonical form, and then
    :func:`symdsl.canon.canonicalize` leaves the model alone.
    """

    original: ResolvedSpec | None = None


def _resolve_two_forms(spec: Spec, model, state, config, registries: Registries) -> TwoFormSpec:
    """Bind a spec that declares a canonical form, on a model in either form.

    A model in its original form is bound as the canonicalize steps read it, canonicalized on
    a copy, and the canonical form is bound on that copy (with coverage); a model already in
    canonical form (see :meth:`_Resolver.in_canonical_form`) is bound directly.
    """
    if model is None:
        raise UsageError(f"spec '{spec.name}' declares a canonical form ('canonical'): binding it needs the model "
                         "itself (its canonical form is made by running the canonicalize steps), not only a state dict")

    def two_form(resolved: ResolvedSpec, original: ResolvedSpec | None) -> TwoFormSpec:
        return TwoFormSpec(**{f.name: getattr(resolved, f.name) for f in fields(ResolvedSpec)}, original=original)

    if _Resolver(spec, model, state, config, registries).in_canonical_form():
        return two_form(_Resolver(spec, model, state, config, registries).resolve("canonical"), None)
    original = _Resolver(spec, model, state, config, registries).resolve("original")
    canonical = copy.deepcopy(model)
    canonicalize(canonical, original)
    after = _Resolver(spec, canonical, canonical.state_dict(keep_vars=True), model_config(canonical), registries)
    return two_form(after.resolve("canonical", steps=original.canonicalize), original)
