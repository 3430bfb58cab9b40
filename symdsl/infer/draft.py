"""From a finished walk to a draft spec: sites, patterns, canonicalizers, names and templates.

Steps: describe every parameter axis in terms of components (:mod:`.patterns`); pick each
eligible component's group (:mod:`.groups`); attach per-head components to their head site;
plan norm folding, untying and writer centring (:mod:`.canon`); name the sites after their role
(``resid``, ``heads``, ``qk``, ``ov``, ``mlp``) and, when every layer has the same symmetries,
write layer entries once with ``${i}`` (:mod:`.layers`). The result is a :class:`Draft`, which
:mod:`.emit` writes as commented YAML.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .canon import fold_accepts_unbound_gain, owner, plan_center, plan_fold
from .groups import Decision, assign_per, assign_per_stack, decide
from .layers import Layers, find_layers, templatize
from .patterns import describe, leaves, tensor_text, walk_factors
from .walk import Walk

_ROLE_BASE = {"heads": "heads", "qk": "qk", "ov": "ov", "mlp": "mlp", "linear": "lin", "experts": "experts"}
_DIM_OF_ROLE = {"resid": "d", "heads": "h", "qk": "k", "ov": "k", "mlp": "f", "kv": "kvh", "qh": "g", "experts": "E"}
_GENERIC = {"dense", "proj", "linear", "fc", "out", "weight", "bias", "c_proj", "c_fc", "lin"}


@dataclass
class SiteEntry:
    """One ``sites:`` entry (``key`` may hold ``${i}``); ``size`` is a dim name."""

    key: str
    group: str
    size: str
    per: str | None
    preserve: str | None
    why: list[str]
    count: int                 # how many concrete sites the entry declares
    size_value: int = 0
    per_size: int | None = None
    options: dict = field(default_factory=dict)   # the kind's options (a rotary site's pair layout)


@dataclass
class Draft:
    """A draft spec, ready to be written as YAML by :func:`symdsl.infer.emit.render`."""

    name: str
    model: str
    example: dict[str, Any]
    matches: dict[str, list[str]]
    dims: list[tuple[str, Any, str]] = field(default_factory=list)
    repeat: dict[str, str] | None = None
    canonicalize: list[tuple[dict, str]] = field(default_factory=list)
    sites: list[SiteEntry] = field(default_factory=list)
    tensors: list[tuple[str, str, str]] = field(default_factory=list)
    invariant: list[tuple[str, str]] = field(default_factory=list)
    tied: list[list[str]] = field(default_factory=list)
    outputs: list[tuple[str, str, str]] = field(default_factory=list)   # (name, pattern, why) equivariant
    notes: list[str] = field(default_factory=list)       # components left unbound, and why
    warnings: list[str] = field(default_factory=list)    # what may make the draft's own check fail
    info: list[str] = field(default_factory=list)        # how the draft is laid out
    text: str = ""

    def site_counts(self) -> dict[str, int]:
        """Concrete sites per group kind (``orthogonal+ones`` for preserve: ones)."""
        out: dict[str, int] = {}
        for s in self.sites:
            key = s.group + ("+ones" if s.preserve else "") + (" per head" if s.per else "")
            out[key] = out.get(key, 0) + s.count
        return out


def _module_base(name: str, fallback: str) -> str:
    """A site name from the module that owns a tensor: ``bert.pooler.dense.weight`` -> ``pooler``."""
    parts = [p for p in owner(name).split(".") if p and not p.isdigit() and p not in _GENERIC]
    base = re.sub(r"\W", "_", parts[-1]).lower() if parts else ""
    return base if base and not base[0].isdigit() else fallback


class _Builder:
    def __init__(self, model, graph, walk: Walk, example: dict, name: str | None, registries=None):
        self.registries = registries   # the canonicalizers the draft names (fold_layernorm is probed)
        self.model, self.graph, self.w, self.vars = model, graph, walk, walk.vars
        self.state_names = list(model.state_dict(keep_vars=True))
        self.node_of = {alias: node for node, names in graph.params.items() for alias in names}
        cls = type(model)
        library = "transformers" if cls.__module__.startswith("transformers.") else \
            "timm" if cls.__module__.startswith("timm.") else "torch"
        self.draft = Draft(name or f"{cls.__name__.lower()}-draft", cls.__name__, example, {library: [cls.__name__]})
        self.reads: dict[tuple[str, int], set[str]] = {}
        for _op, param, axis, role, module in walk.uses:
            if role == "read":
                self.reads.setdefault((param, axis), set()).add(module)

    # -- analysis --------------------------------------------------------------------------
    def analyse(self) -> None:
        vars = self.vars
        self.folds = [plan_fold(self.w, record) for record in self.w.norms]
        for _ in range(8):
            inexpressible: set[int] = set()
            self.descs = {n: [describe(vars, v, inexpressible) for v in self.w.param_axes[self.node_of[n]]]
                          for n in self.state_names if self.node_of.get(n) in self.w.param_axes}
            fresh = [r for r in inexpressible if "fixed" not in vars.flags(r)]
            if not fresh:
                break
            for root in fresh:
                vars.flag(root, "fixed", "part of a fused axis nested inside a composite axis, which a pattern "
                                         "cannot write")
        self.eff = vars.effective_flags()
        self.tensors_of: dict[int, list[str]] = {}
        self.nested_of: dict[int, list[str]] = {}       # leaves below a nested fused axis -> tensors
        occurrences: dict[int, list] = {}
        leading: dict[int, list] = {}     # root -> the root of axis 0 of each tensor it occurs in later
        for n, axes in self.descs.items():
            lead = _single_root(axes[0]) if axes else None
            for position, parts in enumerate(axes):
                for part in parts:
                    for f, before in walk_factors(part):
                        users = self.tensors_of.setdefault(f.root, [])
                        if n not in users:
                            users.append(n)
                        occurrences.setdefault(f.root, []).append(before)
                        leading.setdefault(f.root, []).append(lead if position else None)
        folds_by_root: dict[int, list] = {}
        for plan in self.folds:
            folds_by_root.setdefault(vars.root(plan.var), []).append(plan)
        self.decisions: dict[int, Decision] = {}
        bound = any(f.kind in ("rms", "gain") and f.norm for f in self.folds) and \
            not fold_accepts_unbound_gain(self.registries)
        for root in self.tensors_of:
            flags = self.eff.get(root, {})
            if "touched" in flags and "fixed" not in flags and vars.size(root) > 1:
                self.decisions[root] = decide(root, vars.size(root), flags, folds_by_root.get(root, []),
                                              gain_stays_bound=bound)
        self._rotary_kinds()
        # folded RMSNorm gains on a full rotation site stay unbound (1 commutes with every rotation);
        # so do folded per-feature gains (a bound one would multiply coordinatewise)
        self.unbound_gains = {f.norm + ".weight" for d in self.decisions.values()
                              for f in d.folds if f.norm and (f.kind == "rms" and d.level == "orthogonal" or
                                                              f.kind == "gain" and d.group == "orthogonal")}
        assign_per(self.decisions, occurrences)
        assign_per_stack(self.decisions, leading)
        self.orient = {root: vars.orientation(root) for root in self.decisions}
        self.folds_by_root = folds_by_root

    def _rotary_kinds(self) -> None:
        """Components that rotary position embeddings act on: a query/key basis that is otherwise
        free (invertible) takes a registered kind whose elements commute with RoPE's pairs
        (``GroupKind.rotary_options``); anything else there is left unbound."""
        layouts: dict[int, set[str]] = {}
        for var, layout in self.w.rotary:
            layouts.setdefault(self.vars.root(var), set()).add(layout)
        kinds = self.registries.group_kinds if self.registries is not None else {}
        for root, found in layouts.items():
            d = self.decisions.get(root)
            if d is None:
                continue
            where = (self.eff.get(root, {}).get("rotary") or ["the rotary position embedding"])[0]
            choice = None
            if d.level == "invertible" and len(found) == 1:
                layout = next(iter(found))
                choice = next(((name, dict(options)) for name, kind in kinds.items()
                               for options in [kind.rotary_options(layout)] if options is not None), None)
            if choice is None:
                del self.decisions[root]
                reason = (f"{where}: only a kind whose elements commute with its pair rotations may act here, and "
                          + ("none is registered" if d.level == "invertible" and len(found) == 1 else
                             f"this axis also needs a {d.group} site"))
                self.eff.setdefault(root, {}).setdefault("fixed", []).insert(0, reason)
                continue
            d.kind, d.options = choice
            pairs = "i with i + n/2" if found == {"half"} else "2i with 2i + 1"
            d.why.append(f"rotary position embeddings turn each coordinate pair ({pairs}) by a position-dependent "
                         f"angle ({where}): only one scaled rotation per pair commutes with that")

    def dual_of(self, alias: str):
        node = self.node_of[alias]
        owners = {owner(a) for a in self.graph.params[node]}

        def dual(f, whole: bool, axis: int) -> bool:
            if self._self_dual(f.root):
                # self-dual groups: the prime only documents the side, so write readers dual
                if not whole:
                    return False
                modules = self.reads.get((node, axis), set())
                return bool(modules) and (owner(alias) in modules or not modules & owners)
            return bool(f.parity ^ self.orient[f.root])
        return dual

    def _self_dual(self, root: int) -> bool:
        """Is the site's kind self-dual (g^-T = g)? Then a prime only documents the side."""
        kind = self.registries.group_kinds.get(self.decisions[root].group)
        return bool(kind is not None and kind.self_dual)

    def output_text(self, node: str, names: dict[int, str]) -> str:
        """The pattern of a feature output (activations: primal, as a writer's output axis)."""
        axes = [describe(self.vars, var, set()) for var in self.w.values[node]]
        return tensor_text(axes, lambda r: names.get(r) if r in self.decisions else None,
                           lambda f, whole, axis: not self._self_dual(f.root) and bool(f.parity ^ self.orient[f.root]))

    def text(self, alias: str, names: dict[int, str]) -> str:
        return tensor_text(self.descs[alias], lambda r: names.get(r) if r in self.decisions else None,
                           self.dual_of(alias))

    # -- naming ----------------------------------------------------------------------------
    def name_sites(self) -> None:
        self.layers: Layers | None = find_layers(self.state_names)
        layers = self.layers
        local: dict[int, int] = {}
        for root in self.decisions:
            where = {layers.split(n)[0] if layers and layers.split(n) else None for n in self.tensors_of[root]}
            if len(where) == 1 and None not in where:
                local[root] = where.pop()
        self.local = local
        names: dict[int, str] = {}
        globals_ = [r for r in self.decisions if r not in local]
        normed = [r for r in globals_ if r in self.folds_by_root]
        spanning = [r for r in globals_ if layers and len({layers.split(n)[0] for n in self.tensors_of[r]
                                                          if layers.split(n)}) > 1]
        pool = normed or spanning
        self.resid = max(pool, key=lambda r: len(self.tensors_of[r])) if pool else None
        taken: set[str] = set()

        def unique(base: str) -> str:
            name, n = base, 1
            while name in taken:
                n += 1
                name = f"{base}{n}"
            taken.add(name)
            return name

        if self.resid is not None:
            names[self.resid] = unique("resid")
        for root in globals_:
            if root not in names:
                role = self.decisions[root].role
                names[root] = unique(role if role in ("heads", "qk", "ov") else
                                     _module_base(self.tensors_of[root][0], _ROLE_BASE[role]))
        # local sites: the i-th component of each layer, by first use in state-dict order
        self.layer_roots: dict[int, list[int]] = {}
        for n in self.state_names:
            where = layers.split(n) if layers else None
            if where is None or n not in self.descs:
                continue
            for root in self.tensors_in(n):
                if local.get(root) == where[0] and root not in self.layer_roots.setdefault(where[0], []):
                    self.layer_roots[where[0]].append(root)
        self.bases: dict[int, str] = {}
        for i, roots in self.layer_roots.items():
            seen: set[str] = set()
            for root in roots:
                base, n = self._role_base(root), 1
                while (base if n == 1 else f"{base}{n}") in seen or (base if n == 1 else f"{base}{n}") in taken:
                    n += 1
                self.bases[root] = base if n == 1 else f"{base}{n}"
                seen.add(self.bases[root])
        self.global_names = names
        self.templated = self._try_templates()
        self.names = dict(names)
        for root, i in local.items():
            self.names[root] = f"{self.bases[root]}.{i}"

    def _role_base(self, root: int) -> str:
        """The name a site gets from its role; grouped-query attention's head axis has two
        permutations: the key/value heads (``kv``) and, per key/value head, its query heads (``qh``)."""
        d = self.decisions[root]
        if d.role == "heads":
            if d.per is not None and self.decisions[d.per].role == "heads":
                return "qh"
            if any(o.per == root and o.role == "heads" for o in self.decisions.values()):
                return "kv"
        if d.role == "qk" and d.kind is None and any(o.role == "qk" and o.kind is not None and o.per == d.per
                                                     for o in self.decisions.values()):
            return "qkp"           # partial rotary: the pass-through part of a head's query/key basis
        return _ROLE_BASE[d.role]

    def tensors_in(self, alias: str) -> list[int]:
        return list(dict.fromkeys(f.root for parts in self.descs[alias] for part in parts
                                  for f, _ in walk_factors(part) if f.root in self.decisions))

    def _signature(self, i: int) -> list[tuple]:
        roots = self.layer_roots.get(i, [])
        out = []
        for root in roots:
            d = self.decisions[root]
            per = None
            if d.per is not None:
                per = ("local", roots.index(d.per)) if d.per in roots else ("global", self.global_names.get(d.per))
            out.append((self.bases[root], d.level, d.size, per))
        return out

    def _try_templates(self) -> bool:
        layers = self.layers
        if layers is None:
            return False
        if any(self._signature(i) != self._signature(0) for i in range(layers.count)):
            return False
        self.template_names = dict(self.global_names)
        for root, i in self.local.items():
            self.template_names[root] = f"{self.bases[root]}.${{i}}"
        for rest in layers.rests:
            texts = {self.text(layers.name(i, rest), self.template_names) for i in range(layers.count)
                     if layers.name(i, rest) in self.descs}
            if len(texts) > 1:
                return False
        return True

    # -- canonicalizers ------------------------------------------------------------------
    def plan_canon(self) -> None:
        draft, order = self.draft, {n.name: i for i, n in enumerate(self.graph.nodes)}
        orthogonal = [d for d in self.decisions.values() if d.group == "orthogonal"]
        unties: list[list[str]] = []
        untied_ops: set[str] = set()
        folds = sorted((f for d in orthogonal for f in d.folds), key=lambda f: order[f.node])
        for plan in folds:
            for group in plan.unties:
                if group not in unties:
                    unties.append(group)
            untied_ops |= plan.untied_ops
        for group in self.template_groups(unties):
            draft.canonicalize.append(({"untie": group}, "the tied weight reads a norm that is folded below, but "
                                       "its other use must keep the unscaled values"))
        site_of = {d.root: self.global_names.get(d.root) or self.names[d.root] for d in orthogonal}
        fold_site = {f.norm: site_of[d.root] for d in orthogonal for f in d.folds}
        gain_form = {f.norm: f.gain for f in folds}
        steps = self.template_groups([[f.norm] + f.readers for f in folds])
        for group in steps:
            site = fold_site.get(group[0]) or fold_site.get(self._concrete(group[0]))
            form = gain_form.get(group[0]) or gain_form.get(self._concrete(group[0]))
            step = {"norm": group[0], "readers": group[1:], **({"site": site} if site else {}),
                    **({"gain": form} if form != "weight" else {})}
            draft.canonicalize.append(({"fold_layernorm": step}, "gain folded into every layer that reads the norm's output"))
        self.center_notes: dict[int, str] = {}
        for d in orthogonal:
            if d.preserve != "ones":
                continue
            plan = plan_center(self.w, d.root, untied_ops)
            if plan.ok and plan.writers:
                site = self.global_names.get(d.root) or self.names[d.root]
                draft.canonicalize.append(({"center_writers": {"site": site, "writers": templatize(plan.writers, self.layers)
                                                               if self.templated else plan.writers}},
                                           "every raw reader of the stream is a LayerNorm, which ignores the mean"))
            else:
                self.center_notes[d.root] = plan.why or "no writer found"

    def _concrete(self, name: str) -> str:
        """Layer 0's name for a templated one (``layers.${i}.norm`` -> ``layers.0.norm``)."""
        return name.replace("${i}", "0")

    def template_groups(self, groups: list[list[str]]) -> list[list[str]]:
        """Groups of names (a tie, an untie, a fold) written once with ${i} when every layer has one."""
        layers = self.layers
        if not self.templated or layers is None:
            return [list(g) for g in groups]
        present = {tuple(g) for g in groups}
        out: list[list[str]] = []
        for group in groups:
            where = [layers.split(n) for n in group]
            if where and all(w is not None for w in where) and len({w[0] for w in where}) == 1 and \
                    all(tuple(layers.name(i, w[1]) for w in where) in present for i in range(layers.count)):
                group = [layers.name("${i}", w[1]) for w in where]
            if group not in out:
                out.append(group)
        return out

    # -- tensors -------------------------------------------------------------------------
    def unbound_reason(self, root: int) -> str | None:
        """Why a component of a parameter axis is unbound: a model boundary first (vocabulary,
        inputs, outputs), else what blocked it (an op without rule, a partial slice, ...)."""
        flags = self.eff.get(root, {})
        if self.vars.size(root) <= 1:
            return None
        if "fixed" in flags:
            reasons = flags["fixed"] or ["fixed"]
            certain = [r for r in reasons if any(b in r for b in _CERTAIN)]
            other = [r for r in reasons if not any(b in r for b in _BOUNDARY)]
            return (certain or other or reasons)[0]
        if "touched" not in flags:
            return "not used by the traced forward pass"
        return None

    def comment(self, alias: str) -> str:
        notes = []
        for axis, parts in enumerate(self.descs[alias]):
            for part in parts:
                for f, _ in walk_factors(part):
                    if f.root not in self.decisions:
                        reason = self.unbound_reason(f.root)
                        if reason:
                            notes.append(f"axis {axis}: {reason}")
        return "; ".join(dict.fromkeys(notes))

    def write_tensors(self) -> None:
        draft, layers = self.draft, self.layers
        names = self.template_names if self.templated else self.names
        entries: list[tuple[str, str]] = []          # (key, alias used for the text)
        done: set[str] = set()
        for n in self.state_names:
            where = layers.split(n) if (layers and self.templated) else None
            if where is not None:
                key = layers.name("${i}", where[1])
                if key in done:
                    continue
                done.add(key)
                entries.append((key, layers.name(0, where[1])))
            else:
                entries.append((n, n))
        for key, alias in entries:
            if alias not in self.descs:
                draft.invariant.append((key, "not in the traced graph"))
                continue
            if alias in self.unbound_gains:
                draft.invariant.append((key, "RMSNorm gain: 1 after folding, which commutes with every rotation"))
                continue
            text = self.text(alias, names)
            if not text or all(entry == "_" for entry in text.split(" ")):     # "" for a 0-d tensor
                draft.invariant.append((key, self.comment(alias) or "no axis carries a symmetry"))
            else:
                draft.tensors.append((key, text, self.comment(alias)))
        ties = []
        # untie gives every name but its last a copy: the last stays tied to the names untie left out
        # (T5: lm_head gets a copy; shared and both stacks' embed_tokens remain one tensor)
        copies = {n for step, _ in draft.canonicalize if "untie" in step for n in step["untie"][:-1]}
        for node, aliases in self.graph.params.items():
            aliases = [a for a in aliases if a in self.descs
                       and not (a in copies or (layers and _untied_template(a, copies, layers)))]
            if len(aliases) > 1:
                ties.append(aliases)
        draft.tied = self.template_groups(ties)
        for output, node in self.w.outputs:
            text = self.output_text(node, names)
            if any(entry != "_" for entry in text.split(" ")):
                draft.outputs.append((output, text, "a feature output: the symmetry moves it, so whoever reads "
                                                    "it applies the same transform"))

    # -- sites and dims ------------------------------------------------------------------
    def write_sites(self) -> None:
        draft, layers = self.draft, self.layers
        entries: list[tuple[str, int, int]] = []     # (key, root, count)
        for root, name in self.global_names.items():
            entries.append((name, root, 1))
        if self.templated:
            for root in self.layer_roots.get(0, []):
                entries.append((f"{self.bases[root]}.${{i}}", root, layers.count))
        else:
            for i in sorted(self.layer_roots):
                for root in self.layer_roots[i]:
                    entries.append((self.names[root], root, 1))
        order = {root: i for i, root in enumerate(self.decisions)}
        entries.sort(key=lambda e: (e[0] != "resid", order[e[1]]))
        dims: dict[str, tuple[Any, str]] = {}
        site_dim: dict[str, str] = {}
        for key, root, count in entries:
            d = self.decisions[root]
            base = key.split(".")[0]
            role = "resid" if root == self.resid else base if base in ("kv", "qh") else d.role
            plain = "n_" + re.sub(r"\W", "_", base)
            dim, n = _DIM_OF_ROLE.get(role, plain), 1
            while dim in dims and dims[dim][0] != d.size:   # the preferred letter holds another size
                n += 1
                dim = plain + (str(n) if n > 2 else "")
            if dim not in dims:
                dims[dim] = (d.size, self.size_source(root))
            site_dim[key] = dim
            per = None
            if d.per is not None:
                per = (self.template_names if self.templated else self.names)[d.per]
            draft.sites.append(SiteEntry(key, d.group, dim, per, d.preserve, self.site_why(d), count, d.size,
                                         self.decisions[d.per].size if d.per is not None else None, dict(d.options)))
        for dim, (value, source) in dims.items():
            if source:
                draft.dims.append((dim, f'shape("{source[0]}", {source[1]})', f"= {value}"))
            else:
                draft.dims.append((dim, value, "read from the traced graph"))
        if self.templated:
            draft.dims.append(("L", f'len("{layers.container}")', f"= {layers.count} layers"))
            draft.repeat = {"i": "L"}

    def size_source(self, root: int) -> tuple[str, int] | None:
        """A (tensor, axis) whose whole axis is this component, to read its size from the model."""
        names = self.tensors_of[root]
        layers = self.layers
        for n in names:
            if layers and self.templated and layers.split(n) and layers.split(n)[0] != 0:
                continue
            for axis, parts in enumerate(self.descs[n]):
                if len(parts) == 1 and len(parts[0]) == 1 and parts[0][0].root == root:
                    return n, axis
        return None

    def site_why(self, d: Decision) -> list[str]:
        why = list(d.why)
        if d.per is not None:
            parent = self.global_names.get(d.per) or self.bases.get(d.per)
            if self.decisions[d.per].role == "experts":
                why.append(f"one element per index of {parent}: it only occurs in tensors stacked over the "
                           "experts, so each expert's slice moves on its own")
            else:
                why.append(f"one element per index of {parent}: it only occurs next to that head axis, which "
                           "attention keeps apart")
        if d.root in getattr(self, "center_notes", {}):
            why.append(f"writers not centred: {self.center_notes[d.root]}")
        return why

    def notes(self) -> None:
        """Header notes: components blocked by something other than a model boundary, and
        sites that the model computes in less than float64 (the numeric check sees that)."""
        draft = self.draft
        blocked: dict[str, list[str]] = {}
        for root, users in list(self.tensors_of.items()) + list(self.nested_of.items()):
            reasons = self.eff.get(root, {}).get("fixed", [])
            if root in self.decisions or self.vars.size(root) <= 1 or any(b in r for r in reasons for b in _CERTAIN):
                continue
            other = [r for r in reasons if not any(b in r for b in _BOUNDARY) and "nested inside" not in r] or \
                [r for r in reasons if not any(b in r for b in _BOUNDARY)]
            if other:
                reason = other[0]
                if self.templated:     # the same reason in every layer: one note
                    reason = re.sub(rf"\b{re.escape(self.layers.container)}\.\d+\.", self.layers.name("${i}", ""), reason)
                mine = blocked.setdefault(reason, [])
                mine.extend(u for u in users if u not in mine)
        for reason, users in blocked.items():
            shown = templatize(users, self.layers) if self.templated else users
            draft.notes.append(f"{reason} -> left unbound: {', '.join(shown[:4])}{' ...' if len(shown) > 4 else ''}")
        low: dict[str, set[str]] = {}
        for name in self.w.low_precision:
            node = self.graph.node(name)
            roots = {leaf for ref in node.refs() for var in _vars(self.w.values.get(ref.name))
                     for leaf in leaves(self.vars, var)}
            sites = sorted({self.names[r] for r in roots if r in self.decisions})
            if sites:
                low.setdefault(node.module or node.name, set()).update(sites)
        if low:
            modules = list(low)
            dtype = str(self.graph.node(self.w.low_precision[0]).dtype).replace("torch.", "")
            draft.warnings.append(f"the model computes below float64 on sites {', '.join(sorted(set().union(*low.values())))} "
                               f"(e.g. {dtype} in {', '.join(modules[:2])}{' ...' if len(modules) > 2 else ''}): the "
                               "float64 numeric check confirms these symmetries only to that precision; check with a "
                               "larger --tolerance (1e-6 for float32)")
        if not self.templated and self.layers is not None:
            draft.info.append(f"the layers of '{self.layers.container}' do not all have the same symmetries: "
                              "every layer is written out")

    def build(self) -> Draft:
        self.analyse()
        self.name_sites()
        self.plan_canon()
        self.write_tensors()
        self.write_sites()
        self.notes()
        return self.draft


# fixed-reasons that mark a model boundary for sure, and every reason that is a boundary at all
_CERTAIN = ("returned by the model", "model input", "embedding rows", "token axis", "spatial axis")
_BOUNDARY = _CERTAIN + ("non-persistent buffer", "constant tensor")


def _vars(value) -> list[int]:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, list):
        return [v for item in value for v in _vars(item)]
    return []


def _untied_template(alias: str, untied: set[str], layers: Layers) -> bool:
    where = layers.split(alias)
    return where is not None and layers.name("${i}", where[1]) in untied


def build_draft(model, graph, walk: Walk, example: dict, name: str | None = None, *, registries) -> Draft:
    """The draft spec for ``model`` from its captured ``graph`` and the finished ``walk``.

    >>> from symdsl.plugins import load
    >>> import torch
    >>> from symdsl.graph import capture
    >>> from symdsl.infer.walk import walk
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    >>> graph = capture(net, torch.randn(2, 3))
    >>> draft = build_draft(net, graph, walk(graph, set(net.state_dict()), load().op_rules), {"inputs": {}}, registries=load())
    >>> [(s.key, s.group) for s in draft.sites], draft.invariant
    ([('mlp', 'permutation')], [('2.bias', 'axis 0: returned by the model')])
    """
    return _Builder(model, graph, walk, example, name, registries).build()


__all__ = ["Draft", "SiteEntry", "build_draft"]


def _single_root(parts) -> int | None:
    """The component of an axis that is one plain factor (a stack of experts), else None."""
    if len(parts) != 1 or len(parts[0]) != 1 or parts[0][0].parts:
        return None
    return parts[0][0].root
