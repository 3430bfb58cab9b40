"""Do two specs bound to one model declare the same sites? Site names may differ (a draft calls the
pooler's units `pooler`, a shipped spec `pool`), so the comparison finds the renaming: walking every
tensor's axes (each axis a list of parts, each part a list of factors `(site, dual)`), the draft's
site on a factor must always map to the same shipped site, the factor's duality must agree, and the
two sites must have the same kind, size, per-site (renamed) and preserve option. Both specs must
bind the same tensors and declare the same outputs (equivariant features) the same way: the outputs
the model returns (a spec declares `last_hidden_state` for every class; a token classifier does not
return it, and a draft declares only what is returned)."""
from __future__ import annotations

from symdsl.api.output_frame import returned_outputs


def _factors(binding) -> list:
    """[(axis, part, factor index, site, dual)] for a TensorBinding: its site on every factor."""
    return [(a, p, f, factor.site, factor.dual, factor.size)
            for a, axis in enumerate(binding.axes) for p, part in enumerate(axis.parts)
            for f, factor in enumerate(part)]


def _shape(binding) -> tuple:
    return tuple(tuple(len(part) for part in axis.parts) for axis in binding.axes)


def _walk(problems: list, renaming: dict, what: str, mine: dict, theirs: dict) -> None:
    if set(mine) != set(theirs):
        problems.append(f"{what} differ: only in the draft {sorted(set(mine) - set(theirs))}, "
                        f"only in the shipped spec {sorted(set(theirs) - set(mine))}")
    for name in sorted(set(mine) & set(theirs)):
        if _shape(mine[name]) != _shape(theirs[name]):
            problems.append(f"{what[:-1]} {name}: axes {_shape(mine[name])} vs {_shape(theirs[name])}")
            continue
        for (a, p, f, site, dual, size), (_, _, _, other, other_dual, other_size) in zip(
                _factors(mine[name]), _factors(theirs[name])):
            where = f"{what[:-1]} {name} axis {a} part {p} factor {f}"
            if (site is None) != (other is None) or dual != other_dual or size != other_size:
                problems.append(f"{where}: {site}{chr(39) * dual} ({size}) vs {other}{chr(39) * other_dual} ({other_size})")
            elif site is not None and renaming.setdefault(site, other) != other:
                problems.append(f"{where}: draft site {site} is shipped {other} here, {renaming[site]} elsewhere")


def _returned(resolved, model) -> dict:
    names = returned_outputs(resolved.spec, resolved, model)
    return {name: binding for name, binding in resolved.outputs.items() if name in names}


def site_differences(drafted, shipped, model) -> tuple[dict[str, str], list[str]]:
    """(renaming of the draft's sites to the shipped ones, every difference found) for two
    ResolvedSpecs of ``model``; no differences means the same sites, kinds and tensors."""
    renaming: dict[str, str] = {}
    problems: list[str] = []
    _walk(problems, renaming, "tensors", drafted.tensors, shipped.tensors)
    _walk(problems, renaming, "outputs", _returned(drafted, model), _returned(shipped, model))
    if len(set(renaming.values())) != len(renaming):
        problems.append(f"two draft sites map to one shipped site: {renaming}")
    for mine, theirs in renaming.items():
        a, b = drafted.sites[mine], shipped.sites[theirs]
        got = (a.kind.name, renaming.get(a.per, a.per), a.size, a.per_size, a.options.get("preserve"))
        want = (b.kind.name, b.per, b.size, b.per_size, b.options.get("preserve"))
        if got != want:
            problems.append(f"site {mine} (shipped {theirs}): (kind, per, size, per_size, preserve) {got} vs {want}")
    for missing, where in ((set(shipped.sites) - set(renaming.values()), "shipped"),
                           (set(drafted.sites) - set(renaming), "drafted")):
        if missing:
            problems.append(f"{where} sites on no tensor: {sorted(missing)}")
    return renaming, problems


def assert_same_sites(drafted, shipped, model, allowed: dict[str, tuple] | None = None) -> dict[str, str]:
    """Fail unless the two bindings have the same sites (up to names); ``allowed`` maps a shipped
    site to the (kind, per, size, per_size, preserve) the draft gives it instead: a documented
    difference, asserted to be exactly that one. Returns the renaming draft -> shipped."""
    renaming, problems = site_differences(drafted, shipped, model)
    for theirs, expected in (allowed or {}).items():
        mine = next(m for m, t in renaming.items() if t == theirs)
        a = drafted.sites[mine]
        got = (a.kind.name, renaming.get(a.per, a.per), a.size, a.per_size, a.options.get("preserve"))
        assert got == expected, (theirs, got, expected)
        expected_problem = [p for p in problems if p.startswith(f"site {mine} (shipped {theirs})")]
        assert len(expected_problem) == 1, (theirs, problems)       # the documented difference is there
        problems.remove(expected_problem[0])
    assert not problems, "\n".join(problems)
    return renaming
