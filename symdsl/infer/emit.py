"""Write a :class:`~symdsl.infer.draft.Draft` as a commented YAML spec.

The text is written by hand (not ``yaml.dump``) so that every guess carries a comment: why a
site got its group, why an axis was left unbound, why a canonicalizer is there. Scalars that
YAML could misread are quoted; flow values (configs, inputs) go through ``yaml.safe_dump`` so
that floats such as ``1e-05`` come back as floats.
"""
from __future__ import annotations

import json
import re
import textwrap

import yaml

from .draft import Draft

_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*(\$\{[A-Za-z_]+\}[A-Za-z0-9_.\-]*)*$")
_WIDTH = 100


def key(text: str) -> str:
    """A mapping key, quoted unless it is a safe plain scalar.

    >>> key("h.${i}.ln_1.weight"), key("0.weight")
    ('h.${i}.ln_1.weight', '"0.weight"')
    """
    return text if _PLAIN_KEY.match(text) and text not in ("y", "n", "yes", "no", "on", "off", "true", "false", "null") \
        else json.dumps(text)


def flow(value) -> str:
    """A YAML flow value; floats keep a form YAML reads back as floats.

    >>> flow({"eps": 1e-05, "n": 2, "name": "${i}"})
    "{eps: 1.0e-05, n: 2, name: '${i}'}"
    """
    return yaml.safe_dump(value, default_flow_style=True, width=10 ** 9, sort_keys=False).strip().removesuffix("...").strip()


def quote(text: str) -> str:
    """A double-quoted YAML scalar (JSON's escaping is valid YAML).

    >>> print(quote("(heads qk')"))
    "(heads qk')"
    """
    return json.dumps(text)


def _with_comment(line: str, comment: str) -> list[str]:
    if not comment:
        return [line]
    one = f"{line}   # {comment}"
    if len(one) <= _WIDTH:
        return [one]
    indent = " " * (len(line) - len(line.lstrip()))
    return [f"{indent}# {c}" for c in textwrap.wrap(comment, _WIDTH - len(indent) - 2)] + [line]


def _comment_block(lines: list[str], indent: str = "") -> list[str]:
    out = []
    for text in lines:
        wrapped = textwrap.wrap(text, _WIDTH - len(indent) - 2, subsequent_indent="  ") or [""]
        out.extend(f"{indent}# {w}".rstrip() for w in wrapped)
    return out


def render(draft: Draft, header: list[str] | None = None) -> str:
    """The YAML text of ``draft`` (``header``: comment lines to put first).

    >>> from symdsl.infer.draft import Draft
    >>> d = Draft("mlp", "Sequential", {"factory": "m:f", "inputs": {"x": {"randn": True, "shape": [2, 3]}}},
    ...           {"torch": ["Sequential"]}, invariant=[("0.weight", "")])
    >>> print(render(d, ["a draft"]).splitlines()[0])
    # a draft
    """
    out = _comment_block(header or [])
    out += ["symdsl: 1", f"name: {key(draft.name)}",
            f"description: {quote('draft inferred by symdsl infer for ' + draft.model + '; review before use')}"]
    out.append("matches: " + flow(draft.matches))
    ex = draft.example
    out.append("example:                               # how `symdsl check` rebuilds the model")
    for k in ("transformers", "timm", "factory"):
        if ex.get(k):
            out.append(f"  {k}: {key(ex[k])}")
    out.append(f"  config: {flow(ex.get('config') or {})}")
    out.append("  inputs:")
    for name, item in ex["inputs"].items():
        out.append(f"    {key(name)}: {flow(dict(item))}")
    if ex.get("output"):
        out.append(f"  output: {key(ex['output'])}               # the output the symmetry must keep")
    if draft.dims:
        out.append("")
        out.append("dims:")
        for name, value, comment in draft.dims:
            out += _with_comment(f"  {name}: {value}", comment)
    if draft.repeat:
        out.append("repeat: " + flow(draft.repeat))
    if draft.canonicalize:
        out += ["", "canonicalize:"]
        for step, comment in draft.canonicalize:
            (name, args), = step.items()
            out += _comment_block([comment], "  ")
            if name == "center_writers":
                out += [f"  - {name}:", f"      site: {key(args['site'])}", "      writers:"]
                out += [f"        - {key(w)}" for w in args["writers"]]
            elif name == "fold_layernorm":
                readers = ", ".join(quote(r) for r in args["readers"])
                site = f", site: {quote(args['site'])}" if args.get("site") else ""
                gain = f", gain: {args['gain']}" if args.get("gain") else ""
                out.append(f"  - {name}: {{norm: {quote(args['norm'])}, readers: [{readers}]{site}{gain}}}")
            else:
                out.append(f"  - {name}: [{', '.join(quote(n) for n in args)}]")
    if draft.sites:
        out += ["", "sites:"]
        for site in draft.sites:
            out += _comment_block([f"{site.key}: {site.group}" + (" (preserve ones)" if site.preserve else "")
                                   + ": " + "; ".join(site.why)], "  ")
            body = f"group: {site.group}, size: {site.size}"
            if site.per:
                body += f", per: {quote(site.per)}"
            if site.preserve:
                body += f", preserve: {site.preserve}"
            for option, value in site.options.items():
                body += f", {option}: {value}"
            out.append(f"  {key(site.key)}: {{{body}}}")
    if draft.tensors:
        out += ["", "tensors:"]
        for name, pattern, comment in draft.tensors:
            out += _with_comment(f"  {key(name)}: {quote(pattern)}", comment)
    if draft.invariant:
        out += ["", "invariant:                              # tensors no inferred symmetry touches"]
        for name, comment in draft.invariant:
            out += _with_comment(f"  - {key(name)}", comment)
    if draft.tied:
        out += ["", "tied:                                   # shared parameters (one tensor, several names)"]
        out += [f"  - [{', '.join(quote(n) for n in group)}]" for group in draft.tied]
    if draft.outputs:
        out += ["", "outputs:                                # returned features that move with the weights"]
        for name, pattern, comment in draft.outputs:
            out += _with_comment(f"  {key(name)}: {quote(pattern)}", comment)
    return "\n".join(out) + "\n"
