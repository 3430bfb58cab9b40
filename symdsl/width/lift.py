"""Lift a narrow model into a wide model's configuration, computing exactly the same function.

After canonicalization (LayerNorm gains folded into their readers, writers into the residual
stream mean-centred) every site of the narrow model is embedded into the wide one's, by the rule
its kind names (:meth:`symdsl.groups.GroupKind.lift_rule`):

- ``residual`` (the adapter's residual site, d_n -> d_w): ``x_w = s E x`` with E orthonormal
  columns, ``E^T 1 = 1`` (a mean-zero stream stays mean-zero) and ``s = sqrt(d_w / d_n)``
  (every LayerNorm sees the same variance, so even its eps acts identically). Writers get
  ``s E``, readers ``E / s``, folded gains become ``1_w``, LayerNorm biases (primal vectors
  after folding) ``s E``.
- ``copy`` (heads and MLP units, permutation sites, n_n -> n_w): copied by a surjective copy
  map; the reader divides by the copy count (exact: GELU is elementwise, head copies attend alike).
- ``embed`` (per-head maps, k_n -> k_w): an orthonormal embedding per wide head on both sides;
  on the query side it is scaled by ``c = scale_n / scale_w`` (the softmax temperature: scores
  are ``scale * q . k`` and scale depends on the head dim, per :mod:`symdsl.width.adapters`).

The maps act through the ordinary action engine (:func:`symdsl.act.engine.act_tensor`) with
:class:`symdsl.act.pairs.PairKind` elements, so every tensor is lifted through the spec's own
bindings. Anything without a rule (a spec with no adapter, an unknown site kind, a LayerNorm
that was not folded, an unbound axis whose size differs) is refused with a :class:`UsageError`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..act.engine import act_tensor
from ..canon import canonicalize
from ..errors import UsageError
from ..spec import resolve
from ..spec.binding import BoundAxis, ResolvedSpec, SiteDef, TensorBinding
from ..spec.load import Spec
from ..registry import Registries
from .adapters import IGNORED_CONFIG_KEYS, WidthAdapter, constructor_config, get_adapter
from .maps import LIFT, copy_map, copy_pair, embedding_pair, residual_embedding, residual_pair

EMBEDDINGS = ("identity", "random")


@dataclass
class SiteLift:
    """How one site was lifted: ``rule`` (residual | copy | embed), sizes, the ``(..., 2, wide,
    narrow)`` element (primal, dual), its scale (s for the residual, the temperature c for a
    query/key site, else 1) and, for copies, the copy map (wide unit -> narrow unit)."""

    site: str
    rule: str
    narrow: int
    wide: int
    element: torch.Tensor
    scale: float = 1.0
    copies: torch.Tensor | None = None

    def to_record(self) -> dict[str, Any]:
        """A JSON-serialisable summary (the element itself is left out)."""
        record = {"rule": self.rule, "narrow": self.narrow, "wide": self.wide, "scale": self.scale}
        if self.copies is not None:
            record["copies"] = self.copies.tolist()
        return record


@dataclass
class Lifted:
    """A narrow model lifted into the wide configuration.

    ``model`` is a standard, canonical model of the wide model's class and configuration whose
    outputs equal the narrow model's; ``state`` its state dict; ``sites`` the map used per site.
    """

    model: torch.nn.Module
    state: dict[str, torch.Tensor]
    spec: Spec
    sites: dict[str, SiteLift]
    residual_scale: float
    embedding: str = "identity"
    seed: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        """A JSON-serialisable record of the lift (for ``symdsl.json``).

        >>> # json.dumps(lift(narrow, wide).to_record())
        """
        return {"spec": self.spec.name, "residual_scale": self.residual_scale, "embedding": self.embedding,
                "seed": self.seed, "sites": {name: s.to_record() for name, s in self.sites.items()}, **self.info}


# --------------------------------------------------------------------------- public helpers


def site_sizes(model: torch.nn.Module, spec: Spec, registries: Registries) -> dict[str, int]:
    """Every site's size for this model (e.g. ``{"resid": 64, "heads.0": 4, "qk.0": 16, ...}``).

    >>> from symdsl.plugins import load
    >>> from symdsl.spec.registry import find_spec
    >>> from symdsl.models import build_example
    >>> spec = find_spec("timm-vit", load())
    >>> site_sizes(build_example(spec), spec, load())["resid"]
    32
    """
    resolved = resolve(spec, model, registries=registries)
    return {name: site.size for name, site in resolved.sites.items()}


def needs_lift(model_a: torch.nn.Module, model_b: torch.nn.Module) -> bool:
    """True when two models of one class have the same parameter names but not the same shapes
    (different widths), i.e. when :func:`lift` must run before they can be aligned.

    Models of different classes or parameter names (other depths) give False: the ordinary
    pipeline reports those.

    >>> import torch
    >>> needs_lift(torch.nn.Linear(2, 3), torch.nn.Linear(2, 5)), needs_lift(torch.nn.Linear(2, 3), torch.nn.Linear(2, 3))
    (True, False)
    """
    if type(model_a) is not type(model_b):
        return False
    a, b = model_a.state_dict(), model_b.state_dict()
    if list(a) != list(b):
        return False
    return any(a[k].shape != b[k].shape for k in a)


def wide_and_narrow(model_a: torch.nn.Module, model_b: torch.nn.Module, spec: Spec,
                    registries: Registries) -> tuple[torch.nn.Module, torch.nn.Module, bool]:
    """``(wide, narrow, swapped)``: which of two models is at least as wide at every site.

    ``swapped`` is True when ``model_b`` is the wide one. Neither dominating (e.g. A has the wider
    residual, B more heads) is a :class:`UsageError`.

    >>> from symdsl.plugins import load
    >>> from symdsl.spec.registry import find_spec
    >>> from symdsl.experiments.train import small_vit
    >>> from symdsl.data import load_dataset
    >>> ds = load_dataset("digits")
    >>> small, big = small_vit(ds, embed_dim=16, num_heads=2), small_vit(ds, embed_dim=32, num_heads=2)
    >>> wide_and_narrow(small, big, find_spec("timm-vit", load()), load())[2]
    True
    """
    sizes_a, sizes_b = site_sizes(model_a, spec, registries), site_sizes(model_b, spec, registries)
    if set(sizes_a) != set(sizes_b):
        raise UsageError(f"the models have different sites ({sorted(set(sizes_a) ^ set(sizes_b))[:4]}...): "
                         "a width lift needs the same depth and structure")
    if all(sizes_a[s] >= sizes_b[s] for s in sizes_a):
        return model_a, model_b, False
    if all(sizes_b[s] >= sizes_a[s] for s in sizes_a):
        return model_b, model_a, True
    a_wider = next(s for s in sizes_a if sizes_a[s] > sizes_b[s])
    b_wider = next(s for s in sizes_a if sizes_b[s] > sizes_a[s])
    raise UsageError(f"neither model is narrower at every site: A is wider at '{a_wider}' ({sizes_a[a_wider]} > "
                     f"{sizes_b[a_wider]}), B at '{b_wider}' ({sizes_b[b_wider]} > {sizes_a[b_wider]})")


# --------------------------------------------------------------------------- the lift


def lift(narrow: torch.nn.Module, wide: torch.nn.Module, spec: Spec, *, registries: Registries, seed: int = 0,
         embedding: str = "identity") -> Lifted:
    """Lift ``narrow`` into ``wide``'s configuration; the result computes what ``narrow`` computes.

    ``wide`` serves as the template (its class and configuration; its weights are not used).
    ``embedding="identity"`` embeds every site in its first coordinates and copies units
    round-robin; ``"random"`` draws random embeddings and copy maps from ``seed`` (equally exact).

    >>> import torch
    >>> from symdsl.plugins import load
    >>> from symdsl.spec.registry import find_spec
    >>> from symdsl.data import load_dataset
    >>> from symdsl.experiments.train import small_vit
    >>> ds = load_dataset("digits")
    >>> narrow = small_vit(ds, embed_dim=16, num_heads=2, seed=0).double().eval()
    >>> wide = small_vit(ds, embed_dim=32, num_heads=4, seed=1).double().eval()
    >>> lifted = lift(narrow, wide, find_spec("timm-vit", load()), registries=load())
    >>> x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    >>> type(lifted.model).__name__, lifted.model.embed_dim, torch.allclose(lifted.model(x), narrow(x), atol=1e-12)
    ('VisionTransformer', 32, True)
    """
    if embedding not in EMBEDDINGS:
        raise UsageError(f"embedding must be one of {EMBEDDINGS}, not {embedding!r}")
    if type(narrow) is not type(wide):
        raise UsageError(f"cannot lift a {type(narrow).__name__} into a {type(wide).__name__}: "
                         "the narrow and wide models must be of one class")
    adapter = get_adapter(spec.name)
    narrow_c, r_n = _canonical_copy(copy.deepcopy(narrow), spec, registries)
    template, r_w = _canonical_copy(adapter.build(wide), spec, registries)
    param = next(narrow.parameters())
    template = template.to(dtype=param.dtype, device=param.device)
    _check_compatible(narrow_c, template, adapter)
    _check_sites(r_n, r_w)
    generator = torch.Generator().manual_seed(seed)
    lifts = _site_lifts(r_n, r_w, adapter, narrow_c, template, randomize=embedding == "random",
                        generator=generator)
    _check_norms_folded(narrow_c, _folded_gains(r_n, adapter.residual))
    state = _lift_state(narrow_c.state_dict(), r_n, r_w, lifts, adapter)
    _check_shapes(state, template.state_dict())
    template.load_state_dict(state)
    for attribute in ("symdsl_config", "symdsl_timm"):
        if hasattr(wide, attribute) and not hasattr(template, attribute):
            setattr(template, attribute, copy.deepcopy(getattr(wide, attribute)))
    info = {"narrow": {s: r_n.sites[s].size for s in r_n.sites}, "wide": {s: r_w.sites[s].size for s in r_w.sites}}
    return Lifted(template.eval(), {k: v.detach() for k, v in template.state_dict().items()}, spec, lifts,
                  lifts[adapter.residual].scale, embedding, seed, info)


def _canonical_copy(model: torch.nn.Module, spec: Spec, registries: Registries) -> tuple[torch.nn.Module, ResolvedSpec]:
    """Canonicalize ``model`` in place (it is already a private copy) and bind the spec to the result."""
    model.eval()
    first = resolve(spec, model, registries=registries)
    for step in first.canonicalize:
        if step.canonicalizer.changes_architecture:
            raise UsageError(f"spec '{spec.name}' runs '{step.name}', which changes the architecture: a width lift "
                             "needs a standard checkpoint of the wide configuration")
    canonicalize(model, first)
    after = resolve(spec, model, registries=registries)
    # the steps as they were run (a spec's canonical form may be resolved with other steps)
    after.canonicalize = list(first.canonicalize)
    return model, after


def _check_compatible(narrow: torch.nn.Module, wide: torch.nn.Module, adapter: WidthAdapter) -> None:
    """Same configuration except the width keys, same modules, same norm eps and activations."""
    config_n, config_w = constructor_config(narrow), constructor_config(wide)
    if config_n is not None and config_w is not None:
        for key in sorted(set(config_n) | set(config_w)):
            if key in adapter.width_keys or key in IGNORED_CONFIG_KEYS:
                continue
            if config_n.get(key) != config_w.get(key):
                raise UsageError(f"narrow and wide configurations differ at '{key}' ({config_n.get(key)!r} vs "
                                 f"{config_w.get(key)!r}); only {', '.join(adapter.width_keys)} may differ")
    modules_n, modules_w = dict(narrow.named_modules()), dict(wide.named_modules())
    if list(modules_n) != list(modules_w):
        extra = sorted(set(modules_n) ^ set(modules_w))[:3]
        raise UsageError(f"narrow and wide models have different modules ({extra}): a lift needs one structure")
    for name, module in modules_n.items():
        other = modules_w[name]
        if type(module) is not type(other):
            raise UsageError(f"module '{name}' is a {type(module).__name__} in the narrow model but a "
                             f"{type(other).__name__} in the wide one")
        for attribute in ("eps", "approximate", "variance_epsilon"):
            if getattr(module, attribute, None) != getattr(other, attribute, None):
                raise UsageError(f"module '{name}' has {attribute}={getattr(module, attribute)!r} in the narrow "
                                 f"model but {getattr(other, attribute)!r} in the wide one")


def _check_sites(r_n: ResolvedSpec, r_w: ResolvedSpec) -> None:
    if set(r_n.sites) != set(r_w.sites):
        diff = sorted(set(r_n.sites) ^ set(r_w.sites))[:4]
        raise UsageError(f"narrow and wide models have different sites ({diff}): a width lift needs the same depth")
    for name, site_n in r_n.sites.items():
        site_w = r_w.sites[name]
        for what, n, w in (("size", site_n.size, site_w.size), ("count", site_n.per_size, site_w.per_size)):
            if n is not None and n > w:
                raise UsageError(f"site '{name}': the narrow model's {what} {n} exceeds the wide model's {w}; the "
                                 "narrow model must be at most as wide everywhere (swap the two models?)")


def _site_lifts(r_n: ResolvedSpec, r_w: ResolvedSpec, adapter: WidthAdapter, narrow: torch.nn.Module,
                wide: torch.nn.Module, *, randomize: bool, generator: torch.Generator) -> dict[str, SiteLift]:
    """One lift map per site, by the rule its kind gives (``GroupKind.lift_rule``; see the module docstring)."""
    if adapter.residual not in r_n.sites:
        raise UsageError(f"spec '{r_n.spec.name}' has no site '{adapter.residual}' (the adapter's residual site)")
    lifts = {}
    for name, site in r_n.sites.items():
        n, w = site.size, r_w.sites[name].size
        batch = (r_w.sites[name].per_size,) if site.per else ()
        rule = site.kind.lift_rule(site.options, per=bool(site.per))
        if name == adapter.residual:
            if rule != "residual":
                raise UsageError(f"residual site '{name}' is '{site.kind.name}' {site.options}: the lift needs a "
                                 "LayerNorm residual (orthogonal, preserve: ones)")
            element, s = residual_pair(residual_embedding(w, n, randomize=randomize, generator=generator))
            lifts[name] = SiteLift(name, "residual", n, w, element, s)
        elif rule == "copy":
            g = copy_map(w, n, batch, randomize=randomize, generator=generator)
            lifts[name] = SiteLift(name, "copy", n, w, copy_pair(g, n), 1.0, g)
        elif rule == "embed":
            layer = adapter.query_key_layer(name)
            c = 1.0 if layer is None else (adapter.score_scale(narrow, r_n.prefix, layer)
                                           / adapter.score_scale(wide, r_w.prefix, layer))
            lifts[name] = SiteLift(name, "embed", n, w, embedding_pair(w, n, batch, scale=c, randomize=randomize,
                                                                      generator=generator), c)
        else:
            raise UsageError(f"site '{name}' (group {site.kind.name}{', per ' + site.per if site.per else ''}) has "
                             f"no width-lift rule (its kind's lift_rule gives {rule!r})")
    return lifts


def _lift_binding(binding: TensorBinding, residual: str, sites: dict[str, SiteDef],
                  wide_sizes: dict[str, int] | None) -> TensorBinding:
    """The binding with lift variances (and, for the per-site pass, the parents' wide sizes).

    Self-dual kinds (permutations) need not be primed in a spec, but a lift's two sides differ:
    in a tensor that writes into the residual stream (a primal residual axis), every other axis
    contracts with the tensor's input, so its self-dual factors are read (dual).
    """
    writer_axes = {i for i, axis in enumerate(binding.axes)
                   for part in axis.parts for f in part if f.site == residual and not f.dual}
    axes = []
    for index, axis in enumerate(binding.axes):
        parts = []
        for part in axis.parts:
            factors = []
            for f in part:
                if f.site:
                    reads = writer_axes and index not in writer_axes and sites[f.site].kind.self_dual
                    f = replace(f, dual=f.dual or bool(reads))
                    if wide_sizes is not None and sites[f.site].per is None:
                        f = replace(f, size=wide_sizes[f.site])
                factors.append(f)
            parts.append(tuple(factors))
        axes.append(BoundAxis(tuple(parts), axis.nest))
    return replace(binding, axes=tuple(axes))


def _lift_state(state: dict[str, torch.Tensor], r_n: ResolvedSpec, r_w: ResolvedSpec, lifts: dict[str, SiteLift],
                adapter: WidthAdapter) -> dict[str, torch.Tensor]:
    gains = _folded_gains(r_n, adapter.residual)
    lift_sites = {name: SiteDef(name, LIFT, lift.wide, lift.narrow, site.per, r_w.sites[name].per_size)
                  for name, lift in lifts.items() for site in [r_n.sites[name]]}
    parents = {name: lift.element for name, lift in lifts.items() if lift_sites[name].per is None}
    children = {name: lift.element for name, lift in lifts.items() if lift_sites[name].per is not None}
    wide_sizes = {name: lift.wide for name, lift in lifts.items()}
    out = {}
    with torch.no_grad():
        for name, tensor in state.items():
            binding = r_n.tensors.get(name)
            if name in gains:
                if not bool((tensor == 1).all()):
                    raise UsageError(f"'{name}' should be 1 after folding its LayerNorm gain; it is not")
                out[name] = torch.ones(lifts[adapter.residual].wide, dtype=tensor.dtype, device=tensor.device)
                continue
            if binding is None:
                out[name] = tensor.detach().clone()
                continue
            _check_unbound_sizes(binding, r_w.tensors.get(name))
            # two engine passes: parents (residual, heads, units) first, then per-head maps along
            # the already widened head axis, whose binding must carry the wide head count
            x = tensor.detach().to(torch.float64)
            x = act_tensor(x, _lift_binding(binding, adapter.residual, r_n.sites, None), parents, lift_sites)
            x = act_tensor(x, _lift_binding(binding, adapter.residual, r_n.sites, wide_sizes), children, lift_sites)
            out[name] = x.to(tensor.dtype)
    return out


def _folded_gains(resolved: ResolvedSpec, residual: str) -> set[str]:
    """Names of LayerNorm gains folded into their readers (gain 1 after canonicalization)."""
    found = set()
    for step in resolved.canonicalize:
        if step.name != "fold_layernorm":
            continue
        name = step.args.norm + ".weight"
        binding = resolved.tensors.get(name)
        if binding is not None and residual in binding.sites():
            found.add(name)
    if not any(step.name == "center_writers" and step.args.site == residual for step in resolved.canonicalize):
        raise UsageError(f"spec '{resolved.spec.name}' does not centre the writers of '{residual}': the lifted stream "
                         "must be mean-zero for LayerNorm to act alike")
    return found


def _check_norms_folded(model: torch.nn.Module, gains: set[str]) -> None:
    """Every norm with a gain must have it folded: an unfolded gain cannot be lifted by s E."""
    for owner, module in model.named_modules():
        is_norm = isinstance(module, (torch.nn.LayerNorm, torch.nn.RMSNorm)) or type(module).__name__.endswith("Norm")
        weight = getattr(module, "weight", None)
        if is_norm and isinstance(weight, torch.Tensor) and f"{owner}.weight" not in gains:
            raise UsageError(f"'{owner}' ({type(module).__name__}) has a gain the spec does not fold into the "
                             "residual stream's readers: no width-lift rule for it")


def _check_unbound_sizes(binding: TensorBinding, wide: TensorBinding | None) -> None:
    if wide is None or len(wide.axes) != len(binding.axes):
        raise UsageError(f"'{binding.name}' is bound differently in the wide model")
    for axis_n, axis_w in zip(binding.axes, wide.axes):
        for part_n, part_w in zip(axis_n.parts, axis_w.parts):
            for f_n, f_w in zip(part_n, part_w):
                if not f_n.site and f_n.size != f_w.size:
                    what = f"dimension '{f_n.dim}'" if f_n.dim else "an unbound axis"
                    raise UsageError(f"'{binding.name}' ({binding.pattern!r}): {what} is {f_n.size} in the narrow "
                                     f"model but {f_w.size} in the wide one; only sites can be widened")


def _check_shapes(state: dict[str, torch.Tensor], wide_state: dict[str, torch.Tensor]) -> None:
    if list(state) != list(wide_state):
        missing = sorted(set(wide_state) ^ set(state))[:4]
        raise UsageError(f"lifted and wide state dicts have different tensors ({missing})")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(wide_state[name].shape):
            raise UsageError(f"'{name}' lifts to {tuple(tensor.shape)} but the wide model has "
                             f"{tuple(wide_state[name].shape)}: its axes are not all bound to sites")

