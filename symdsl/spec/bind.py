"""Binding tensors: each axis pattern (``"heads hd resid'"``) against the tensor's shape and the sites."""
from __future__ import annotations

import math

from ..errors import suggest
from .binding import BoundAxis, BoundFactor, TensorBinding
from .context import ResolveContext, dotted
from .pattern import PatternError, blocks_of, parse_pattern


def bind_pattern(context: ResolveContext, name: str, pattern: str, origin: tuple,
                 shape: tuple | None) -> TensorBinding | None:
    """Bind tensor ``name`` of ``shape`` (None for an output, whose size is free) to ``pattern``;
    None after reporting what does not fit. Binding marks the sites used (``context.used_sites``).

    >>> from symdsl.plugins import load
    >>> from symdsl.spec import load_spec_text
    >>> from symdsl.spec.config import resolve_dims
    >>> from symdsl.spec.sites import resolve_sites
    >>> spec = load_spec_text('''
    ... symdsl: 1
    ... name: mlp
    ... dims: {d: 4}
    ... sites: {hidden: {group: permutation, size: d}}
    ... ''')
    >>> context = ResolveContext(spec, None, {}, {}, load())
    >>> resolve_dims(context)
    >>> context.sites = resolve_sites(context, [])
    >>> binding = bind_pattern(context, "up.weight", "hidden _", ("tensors", "up.weight"), (4, 3))
    >>> [axis.size for axis in binding.axes], binding.sites()
    ([4, 3], {'hidden'})
    >>> bind_pattern(context, "up.weight", "hidden _", ("tensors", "up.weight"), (5, 3)) is None
    True
    >>> context.problems[0].message
    "axis 0 of 'up.weight' has size 5, but the pattern gives 4 = 4"
    """
    try:
        axes = parse_pattern(pattern)
    except PatternError as exc:
        context.problem(origin, f"{exc} (column {exc.column} of the pattern)")
        return None
    if shape is not None and len(axes) != len(shape):
        context.problem(origin, f"pattern {pattern!r} has {len(axes)} axes but tensor '{name}' has shape "
                        f"{tuple(shape)} ({len(shape)} axes)", "write one pattern entry per axis; '_' for unbound axes")
        return None
    bound_axes = []
    ok = True
    for index, axis in enumerate(axes):
        parts = []
        for part in axis.parts:
            factors = []
            for f in part:
                factor = _bind_factor(context, f, origin, name)
                if factor is None:
                    ok = False
                    continue
                factors.append(factor)
            parts.append(factors)
        if not ok:
            continue
        axis_size = shape[index] if shape is not None else None
        parts = _infer_unknown(context, parts, axis_size, name, index, origin)
        if parts is None:
            ok = False
            continue
        kept = _drop_empty(parts, axis.nest)
        if kept is None:
            context.problem(origin, f"every part of axis {index} of '{name}' is empty (a site or dimension of size 0)")
            ok = False
            continue
        bound_axes.append(BoundAxis(*kept))
    if not ok:
        return None
    return TensorBinding(name, tuple(bound_axes), pattern, origin)


def _bind_factor(context: ResolveContext, f, origin, tensor) -> BoundFactor | None:
    """One pattern factor: a site (its input size), a dimension, a literal, or '_' (size -1: unknown yet)."""
    if f.name is None:
        return BoundFactor(f.literal if f.literal is not None else -1)
    if f.name in context.empty_sites:
        return BoundFactor(0, dim=f.name)           # its part is empty: dropped by _drop_empty
    if f.name in context.sites:
        site = context.sites[f.name]
        context.used_sites.add(f.name)
        return BoundFactor(site.size_in, site=f.name, dual=f.dual)
    if f.name in context.dims:
        if f.dual:
            context.problem(origin, f"'{f.name}' is a dimension, not a site: it cannot be dual (drop the ')")
            return None
        return BoundFactor(context.dims[f.name], dim=f.name)
    context.problem(origin, f"name '{f.name}' in the pattern of '{tensor}' is neither a site nor a dimension"
                    f"{suggest(f.name, list(context.sites) + list(context.dims))}",
                    "declare it under 'sites' or 'dims'")
    return None


def _drop_empty(parts, nest) -> tuple | None:
    """``(parts, nest)`` without the parts of size 0 (a part naming a site of size 0): None when
    none is left. A nested block left with one part is that part, a plain composite.

    >>> from symdsl.spec.binding import BoundFactor as F
    >>> parts = [[F(2, "heads"), F(4, "qk")], [F(2, "heads"), F(0, dim="qkp")], [F(8, "ov")]]
    >>> [[f.size for f in p] for p in _drop_empty(parts, ((2, 1), (1, 0)))[0]], _drop_empty(parts, ((2, 1), (1, 0)))[1]
    ([[2, 4], [8]], ())
    """
    kept_parts, kept_nest = [], []
    for first, count, shared in blocks_of(len(parts), nest):
        block = [tuple(p) for p in parts[first:first + count] if all(f.size != 0 for f in p)]
        kept_parts.extend(block)
        if block:
            kept_nest.append((len(block), shared if len(block) > 1 else 0))
    if not kept_parts:
        return None
    return tuple(kept_parts), tuple(kept_nest) if any(s for _, s in kept_nest) else ()


def _infer_unknown(context: ResolveContext, parts, axis_size, tensor, index, origin):
    """The axis's factors with the one '_' of unknown size given the size the tensor leaves it,
    or None after reporting that the axis does not factor as written."""
    unknown = [(i, j) for i, p in enumerate(parts) for j, f in enumerate(p) if f.size < 0]
    if not unknown:
        total = sum(math.prod(f.size for f in p) for p in parts)
        if axis_size is not None and total != axis_size:
            detail = " + ".join("*".join(str(f.size) for f in p) for p in parts)
            context.problem(origin, f"axis {index} of '{tensor}' has size {axis_size}, but the pattern gives "
                            f"{detail} = {total}", "check the dims and the factor order of this axis")
            return None
        return parts
    if len(unknown) > 1 or axis_size is None and len(parts) > 1:
        # (a '_' a nested split shares, as in (_ [a | b]), is repeated in each of its parts)
        context.problem(origin, f"axis {index} of '{tensor}' has more than one '_' factor whose size is unknown",
                        "give all but one factor a size (a dimension name or an integer)")
        return None
    if axis_size is None:
        return parts  # an output pattern: '_' takes any size
    i, j = unknown[0]
    known = sum(math.prod(f.size for f in p) for k, p in enumerate(parts) if k != i)
    rest = math.prod(f.size for k, f in enumerate(parts[i]) if k != j)
    size, remainder = divmod(axis_size - known, rest) if rest else (0, 1)
    if remainder or size <= 0:
        context.problem(origin, f"axis {index} of '{tensor}' (size {axis_size}) does not factor as the pattern says")
        return None
    parts[i][j] = BoundFactor(size)
    return parts


def check_per(context: ResolveContext, binding: TensorBinding) -> None:
    """Report a factor on a site declared 'per' a parent when the tensor has no parent factor:
    without it the site's elements (one per parent position) have nothing to index them."""
    factors = [f for a in binding.axes for p in a.parts for f in p]
    for f in factors:
        site = context.sites.get(f.site) if f.site else None
        if site is None or site.per is None:
            continue
        if site.per in context.sites:
            present = any(g.site == site.per for g in factors)
        else:
            present = any(g.dim == site.per for g in factors)
        if not present:
            context.problem(binding.origin, f"site '{site.name}' is declared per '{site.per}', but tensor "
                            f"'{binding.name}' has no '{site.per}' factor to index its elements",
                            f"write the axis as a composite, e.g. ({site.per} {site.name})")


def bind_entries(context: ResolveContext, entries: list, invariant_src: list, outputs_src: list):
    """Bind every (name, pattern, origin) entry, check the invariant names and bind the outputs.

    Returns ``(tensors, attempted, invariant, outputs)``: ``attempted`` holds every name a
    binding was tried for, even one that failed, so that coverage reports no follow-up error.
    """
    tensors: dict[str, TensorBinding] = {}
    attempted: set[str] = set()
    absent: dict[tuple, list[str]] = {}
    for name, pattern, origin in entries:
        if name in tensors:
            context.problem(origin, f"tensor '{name}' is bound twice (also at {dotted(tensors[name].origin)})",
                            "keep one of the two entries")
            continue
        if name not in context.state:
            absent.setdefault(origin, []).append(name)
            continue
        binding = bind_pattern(context, name, pattern, origin, tuple(context.state[name].shape))
        attempted.add(name)
        if binding is not None:
            check_per(context, binding)
            tensors[name] = binding
    # one problem per template entry, however many of its expansions are absent
    for origin, names in absent.items():
        more = f" (and {len(names) - 1} more names from this entry)" if len(names) > 1 else ""
        context.problem(origin, f"tensor '{names[0]}' is not in the model{suggest(names[0], context.state)}{more}",
                        f"backbone names are looked up under the prefix '{context.prefix}'"
                        if context.prefix and origin[0] == "tensors" else "")
    invariant: dict[str, tuple] = {}
    for name, origin in invariant_src:
        if name not in context.state:
            context.problem(origin, f"invariant tensor '{name}' is not in the model{suggest(name, context.state)}")
            continue
        if name in tensors or name in attempted:
            where = dotted(tensors[name].origin) if name in tensors else "tensors"
            context.problem(origin, f"tensor '{name}' is both bound (at {where}) and invariant",
                            "a tensor is either bound to sites or invariant: remove one of the two entries")
        invariant.setdefault(name, origin)
    outputs = {}
    for name, pattern, origin in outputs_src:
        binding = bind_pattern(context, name, pattern, origin, None)
        if binding is not None:
            outputs[name] = binding
    return tensors, attempted, invariant, outputs
