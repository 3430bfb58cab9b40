"""Bind a spec to a concrete model: evaluate dims, expand templates, bind every axis, check coverage.

Resolution runs once per (spec, model configuration); the result is reused for every
transform applied to models of that configuration.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from ..errors import Problem, SpecError, suggest
from ..groups import get_group_kind
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
        for prefix in prefixes:
            if prefix + name in state:
                return prefix + name
        raise ExprError(f"no tensor '{name}' in the model{suggest(name, state)}")

    def module(path: str):
        if model is None:
            raise ExprError("needs the model itself, not only a state dict")
        for prefix in prefixes:
            try:
                return model.get_submodule((prefix + path).rstrip("."))
            except AttributeError:
                continue
        raise ExprError(f"no module '{path}' in the model")

    def shape(name: str, axis: int) -> int:
        return int(state[find(name)].shape[axis])

    def attr(path: str):
        owner, _, attribute = path.rpartition(".")
        target = module(owner) if owner else model
        if not hasattr(target, attribute):
            raise ExprError(f"module '{owner}' has no attribute '{attribute}'")
        return getattr(target, attribute)

    def length(path: str) -> int:
        return len(module(path))

    return {"shape": shape, "attr": attr, "len": length}


def detect_ties(state: Mapping[str, torch.Tensor]) -> list[list[str]]:
    """Groups of state-dict names that share one storage (tied weights)."""
    groups: dict[tuple, list[str]] = {}
    for name, tensor in state.items():
        if tensor.numel() == 0:
            continue
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()))
        groups.setdefault(key, []).append(name)
    return [names for names in groups.values() if len(names) > 1]


class _Resolver:
    def __init__(self, spec: Spec, model: torch.nn.Module | None, state: Mapping[str, torch.Tensor],
                 config: Mapping[str, Any]):
        self.spec, self.m, self.src = spec, spec.model, spec.source
        self.model, self.state, self.config = model, state, dict(config)
        self.problems: list[Problem] = []
        self.dims: dict[str, int] = {}
        self.ranges: dict[str, int] = {}

    def problem(self, path, message, hint=""):
        self.problems.append(self.src.problem(tuple(path), message, hint))

    def fail_if_problems(self):
        if self.problems:
            raise SpecError(self.problems)

    # -- dims and template ranges -------------------------------------------------
    def eval_expr(self, expr, path):
        try:
            return evaluate(expr, {**self.config, **self.dims}, self.functions)
        except ExprError as exc:
            self.problem(path, str(exc), "dims read the model config (see `symdsl check --json` for its keys)")
            return None

    def resolve_dims(self):
        self.functions = _functions(self.model, self.state, list(self.m.prefix))
        for name, expr in self.m.dims.items():
            value = self.eval_expr(expr, ("dims", name))
            if value is not None:
                self.dims[name] = value
        for var, expr in self.m.repeat.items():
            value = self.eval_expr(expr, ("repeat", var))
            if value is not None:
                if value < 0:
                    self.problem(("repeat", var), f"range {value} is negative")
                self.ranges[var] = max(value, 0)
        self.fail_if_problems()

    def expand_keys(self, mapping: Mapping[str, Any], section: tuple) -> list[tuple[str, Any, tuple, dict]]:
        """(expanded key, value, origin path, env) for each template key of a mapping."""
        out = []
        for key, value in mapping.items():
            names = variables(key)
            unknown = [n for n in names if n not in self.ranges]
            if unknown:
                self.problem(section + (key,), f"template variable '${{{unknown[0]}}}' is not declared in 'repeat'"
                             f"{suggest(unknown[0], self.ranges)}", "declare it, e.g. repeat: {i: L}")
                continue
            for env in combos(names, self.ranges):
                out.append((substitute(key, env), value, section + (key,), env))
        return out

    # -- sites ----------------------------------------------------------------------
    def resolve_sites(self, heads: list[str]) -> dict[str, SiteDef]:
        raw = {}
        declared = self.expand_keys(self.m.sites, ("sites",))
        for head in heads:
            declared += self.expand_keys(self.head_models[head].sites, ("heads", head, "sites"))
        for name, site, origin, env in declared:
            if name in raw:
                self.problem(origin, f"site '{name}' is declared twice")
                continue
            try:
                kind = get_group_kind(site.group)
            except KeyError as exc:
                self.problem(origin + ("group",), str(exc.args[0]))
                continue
            options = {"preserve": site.preserve} if site.preserve is not None else {}
            try:
                kind.validate_options(options)
            except ValueError as exc:
                self.problem(origin + ("preserve",), str(exc))
            size = self.eval_expr(site.size, origin + ("size",))
            size_in = self.eval_expr(site.size_in, origin + ("size_in",)) if site.size_in is not None else size
            if size is None or size_in is None:
                continue
            if kind.square and size_in != size:
                self.problem(origin + ("size_in",), f"group '{kind.name}' is square; size_in must equal size")
            per = substitute(site.per, env) if site.per else None
            raw[name] = (kind, size, size_in, per, options, origin)
        sites = {}
        for name, (kind, size, size_in, per, options, origin) in raw.items():
            per_size = None
            if per is not None:
                if per in raw:
                    parent = raw[per]
                    if parent[0].name != "permutation":
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
            total = sum(_prod(f.size for f in p) for p in parts)
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
        known = sum(_prod(f.size for f in p) for k, p in enumerate(parts) if k != i)
        rest = _prod(f.size for k, f in enumerate(parts[i]) if k != j)
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

    def resolve(self) -> ResolvedSpec:
        self.resolve_dims()
        self.used_sites: set[str] = set()
        backbone = self.expand_keys(self.m.tensors, ("tensors",))
        prefix = self.choose_prefix([name for name, *_ in backbone])
        self.head_models = {name: Head.model_validate(substitute_all(h.model_dump(), {"prefix": prefix}))
                            for name, h in self.m.heads.items()}
        heads = self.present_heads()
        self.sites = self.resolve_sites(heads)
        self.fail_if_problems()

        entries = [(prefix + n, substitute(v, env), o) for n, v, o, env in backbone]
        invariant_src = [(prefix + n, ("invariant",)) for n in expand_list(list(self.m.invariant), self.ranges)]
        tied = [[prefix + n for n in g] for g in expand_list([list(g) for g in self.m.tied], self.ranges)]
        steps = self.expand_steps(self.m.canonicalize, prefix, ("canonicalize",))
        outputs_src = [(n, v, ("outputs", n)) for n, v in self.m.outputs.items()]
        head_steps: list[CanonStep] = []
        for head in heads:
            h = self.head_models[head]
            base = ("heads", head)
            entries += [(n, substitute(v, env), o) for n, v, o, env in self.expand_keys(h.tensors, base + ("tensors",))]
            invariant_src += [(n, base + ("invariant",)) for n in expand_list(list(h.invariant), self.ranges)]
            tied += expand_list([list(g) for g in h.tied], self.ranges)
            # a head's steps run before the backbone's: they untie what the backbone's steps would change
            head_steps += self.expand_steps(h.canonicalize, "", base + ("canonicalize",))
            outputs_src += [(n, v, base + ("outputs", n)) for n, v in h.outputs.items()]

        steps = head_steps + steps
        tensors: dict[str, TensorBinding] = {}
        attempted: set[str] = set()  # bound, even if the binding had errors (no cascade of coverage errors)
        for name, pattern, origin in entries:
            if name in tensors:
                self.problem(origin, f"tensor '{name}' is bound twice (also at {tensors[name].origin})")
                continue
            if name not in self.state:
                self.problem(origin, f"tensor '{name}' is not in the model{suggest(name, self.state)}")
                continue
            binding = self.bind_pattern(name, pattern, origin, tuple(self.state[name].shape))
            attempted.add(name)
            if binding is not None:
                self.check_per(binding)
                tensors[name] = binding
        invariant = set()
        for name, origin in invariant_src:
            if name not in self.state:
                self.problem(origin, f"invariant tensor '{name}' is not in the model{suggest(name, self.state)}")
            elif name in tensors:
                self.problem(origin, f"tensor '{name}' is both bound (at {'.'.join(map(str, tensors[name].origin))}) and invariant")
            invariant.add(name)
        outputs = {}
        for name, pattern, origin in outputs_src:
            binding = self.bind_pattern(name, pattern, origin, None)
            if binding is not None:
                outputs[name] = binding

        self.check_coverage(attempted, invariant)
        self.check_ties(tensors, tied, steps)
        for name, site in self.sites.items():
            if name not in self.used_sites and not self.problems:
                self.problem(site.origin, f"site '{name}' is declared but no tensor uses it",
                             "bind it in some tensor pattern, or remove it")
        self.fail_if_problems()
        return ResolvedSpec(self.spec, self.dims, prefix, heads, self.sites, tensors, invariant, tied, steps, outputs)

    def choose_prefix(self, names: list[str]) -> str:
        best = None
        for prefix in self.m.prefix:
            missing = [n for n in names if prefix + n not in self.state]
            if not missing:
                return prefix
            if best is None or len(missing) < len(best[1]):
                best = (prefix, missing)
        prefix, missing = best
        shown = ", ".join(f"'{prefix + n}'" for n in missing[:3]) + (" ..." if len(missing) > 3 else "")
        first = prefix + missing[0]
        self.problem(("tensors",), f"{len(missing)} tensor(s) of the spec are not in the model: {shown}"
                     f"{suggest(first, self.state)}",
                     "is this the right spec for the model? `symdsl specs` lists specs and what they match; "
                     "'prefix' lists alternative name prefixes")
        return prefix

    def present_heads(self) -> list[str]:
        present = []
        for head, h in self.head_models.items():
            names = [n for n, *_ in self.expand_keys(h.tensors, ("heads", head, "tensors"))]
            names += expand_list(list(h.invariant), self.ranges)
            found = [n for n in names if n in self.state]
            if found and len(found) != len(names):
                missing = [n for n in names if n not in self.state]
                self.problem(("heads", head), f"head '{head}' is partly present: missing {missing[:3]}",
                             "a head's tensors must all exist in the model or none")
            elif found:
                present.append(head)
        return present

    def expand_steps(self, steps: list[dict], prefix: str, origin: tuple) -> list[CanonStep]:
        from ..canon import get_canonicalizer  # late: canonicalizers live in plugins
        out = []
        for index, step in enumerate(steps):
            path = origin + (index,)
            if not isinstance(step, dict) or len(step) != 1:
                self.problem(path, "a canonicalize step is a mapping with one key, the canonicalizer name",
                             "e.g. - untie: [lm_head.weight, transformer.wte.weight]")
                continue
            (name, args), = step.items()
            try:
                canon = get_canonicalizer(name)
            except KeyError as exc:
                self.problem(path + (name,), str(exc.args[0]))
                continue
            wrapped = [args] if isinstance(args, (dict, list)) else [args]
            for concrete in expand_list(wrapped, self.ranges):
                try:
                    out.append(CanonStep(name, canon.prepare(concrete, prefix), path + (name,)))
                except ValueError as exc:
                    self.problem(path + (name,), str(exc))
        return out

    def check_coverage(self, tensors, invariant):
        missing = [n for n in self.state if n not in tensors and n not in invariant]
        for name in missing:
            self.problem(("tensors",), f"model tensor '{name}' {tuple(self.state[name].shape)} is neither bound "
                         "nor declared invariant", f"add '{name}' under 'tensors' with an axis pattern, "
                         "or under 'invariant' if no symmetry touches it")

    def check_ties(self, tensors, tied, steps):
        declared = [list(g) for g in tied] + [list(s.args.names) for s in steps if s.name == "untie"]
        for group in detect_ties(self.state):
            if not any(set(group) <= set(d) or set(d) >= set(group) for d in declared):
                self.problem(("tied",), f"tensors {group} are one shared parameter in the model but the spec does not say so",
                             f"add them under 'tied' (they must transform alike), or 'untie' them in 'canonicalize'")
        actual = detect_ties(self.state)
        for group in tied:
            if not any(set(group) <= set(a) for a in actual):
                self.problem(("tied",), f"tensors {group} are declared tied but are separate parameters in the model")
            bindings = [tensors[n] for n in group if n in tensors]
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


def _prod(values) -> int:
    out = 1
    for v in values:
        out *= v
    return out


def resolve(spec: Spec, model: torch.nn.Module | None = None, *, state: Mapping[str, torch.Tensor] | None = None,
            config: Mapping[str, Any] | None = None) -> ResolvedSpec:
    """Bind ``spec`` to a model (or a state dict plus config). Raises SpecError listing every problem.

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
    >>> sorted(resolve(spec, net).sites)
    ['hidden']
    """
    if state is None:
        if model is None:
            raise ValueError("resolve needs a model or a state dict")
        state = model.state_dict(keep_vars=True)
    if config is None:
        config = model_config(model) if model is not None else {}
    return _Resolver(spec, model, state, config).resolve()
