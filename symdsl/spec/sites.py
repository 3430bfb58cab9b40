"""Resolving a spec's sites: group kind, options, sizes and what each is repeated 'per'."""
from __future__ import annotations

from ..errors import UnknownNameError, suggest
from .binding import SiteDef
from .config import eval_expr
from .context import ResolveContext, dotted
from .expand import expand_keys
from .template import substitute, substitute_all


def resolve_sites(context: ResolveContext, heads: list[str]) -> dict[str, SiteDef]:
    """The concrete sites of the backbone and of the present ``heads``, every problem reported.

    Two passes: the first settles each site alone (kind, options, sizes), the second its
    'per' parent, which may be declared after it.

    >>> from symdsl.plugins import load
    >>> from symdsl.spec import load_spec_text
    >>> from symdsl.spec.config import resolve_dims
    >>> spec = load_spec_text('''
    ... symdsl: 1
    ... name: heads
    ... dims: {h: 2, d: 3}
    ... sites: {heads: {group: permutation, size: h}, qk: {group: invertible, size: d, per: heads}}
    ... ''')
    >>> context = ResolveContext(spec, None, {}, {}, load())
    >>> resolve_dims(context)
    >>> site = resolve_sites(context, [])["qk"]
    >>> site.kind.name, site.size, site.per, site.batch
    ('invertible', 3, 'heads', (2,))
    """
    raw: dict[str, tuple] = {}
    declared = expand_keys(context, context.document.sites, ("sites",))
    for head in heads:
        declared += expand_keys(context, context.document.heads[head].sites, ("heads", head, "sites"),
                                {"prefix": context.prefix})
    for name, site, origin, env in declared:
        if name in raw:
            context.problem(origin, f"site '{name}' is declared twice (also at {dotted(raw[name][5])})")
            continue
        try:
            kind = context.kinds.lookup(site.group)
        except UnknownNameError as exc:
            context.problem(origin + ("group",), str(exc))
            continue
        options = {key: value for key, value in (("preserve", site.preserve), ("pairs", site.pairs)) if value is not None}
        for key, value in options.items():
            try:
                kind.validate_options({key: value})
            except ValueError as exc:
                hint = ("'preserve: ones' is an option of orthogonal sites" if key == "preserve"
                        else "'pairs: half' or 'pairs: interleaved' is an option of rotary sites")
                context.problem(origin + (key,), str(exc), hint)
        size = eval_expr(context, substitute_all(site.size, env), origin + ("size",))
        size_in = (eval_expr(context, substitute_all(site.size_in, env), origin + ("size_in",))
                   if site.size_in is not None else size)
        if size is None or size_in is None:
            continue
        if size == 0 and site.size_in is None:
            # an empty space (full rotary leaves no pass-through part): the fused parts naming it
            # are empty and dropped when tensors are bound; the site itself does not exist
            context.empty_sites.add(name)
            continue
        bad = False
        for key, value in (("size", size), ("size_in", size_in)):
            if value < 1 and (key == "size" or site.size_in is not None):
                context.problem(origin + (key,), f"site '{name}' has {key} {value}; a site's size must be positive")
                bad = True
        if bad:
            continue
        if kind.square and size_in != size:
            context.problem(origin + ("size_in",), f"group '{kind.name}' is square; size_in must equal size")
        elif not kind.square and size < size_in:
            context.problem(origin + ("size",), f"group '{kind.name}' maps size_in {size_in} onto size {size}; it "
                            "can only widen (size >= size_in)",
                            "swap size and size_in, or align the other model into this one")
        per = substitute(site.per, env) if site.per else None
        raw[name] = (kind, size, size_in, per, options, origin)
    sites = {}
    for name, (kind, size, size_in, per, options, origin) in raw.items():
        per_size = None
        if per is not None:
            if per in raw:
                parent = raw[per]
                if not parent[0].permutes_positions:
                    context.problem(origin + ("per",), f"'per: {per}' must name a permutation site or a dimension, "
                                    f"but '{per}' is {parent[0].name}",
                                    "elements are indexed by the parent's positions, which only a permutation keeps apart")
                per_size = parent[1]
            elif per in context.dims:
                per_size = context.dims[per]
            else:
                context.problem(origin + ("per",), f"'per: {per}' names no site or dimension"
                                f"{suggest(per, list(raw) + list(context.dims))}")
                continue
        sites[name] = SiteDef(name, kind, size, size_in, per, per_size, options, origin)
    return sites
