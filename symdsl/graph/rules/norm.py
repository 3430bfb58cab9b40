"""Rules for normalisation layers.

layer_norm over an axis carrying
- permutations: fine when its gain and bias carry the same site (they get permuted alike);
- a rotation: only with ``preserve: ones`` (LayerNorm centres along the ones vector) and a
  constant gain (after fold_layernorm the gain is 1); the bias must carry the site;
- anything else (invertible, stiefel): a violation.
rms_norm needs no ``preserve: ones``: it commutes with every rotation when its gain is constant.
"""
from __future__ import annotations

from ..types import atoms_of, normalize, show_axis
from . import PERMUTATION_LIKE, rule
from .linear import same_axis


def _constant(tensor) -> bool:
    return tensor is not None and bool((tensor == tensor.reshape(-1)[0]).all())


def _norm(ctx, weight_index, bias_index, needs_ones):
    x = ctx.tensor_arg(0)
    shape = ctx.arg(1)
    n = len(shape) if isinstance(shape, (list, tuple)) else 1
    axes = x[-n:]
    sites = [a.site for axis in axes for a in atoms_of(axis) if a.site]
    weight = ctx.tensor_arg(weight_index) if weight_index is not None and weight_index < len(ctx.node.args) else None
    bias = ctx.tensor_arg(bias_index) if bias_index is not None and bias_index < len(ctx.node.args) else None
    what = ctx.node.op
    if not sites:
        for param in (weight, bias):
            if param is not None and any(a.site for axis in param for a in atoms_of(axis)):
                site = next(a.site for axis in param for a in atoms_of(axis) if a.site)
                ctx.fail(f"{what} parameters carry {ctx.describe(site)} but its input does not", site)
        return x
    if n != 1:
        ctx.fail(f"{what} over several axes that carry sites has no rule", sites[0])
    for site in sites:
        kind = ctx.kind(site)
        if kind in PERMUTATION_LIKE:
            continue
        if kind != "orthogonal":
            ctx.fail(f"{ctx.describe(site)} reaches {what}, which commutes only with permutations and rotations", site)
        if needs_ones and ctx.sites[site].options.get("preserve") != "ones":
            ctx.fail(f"{ctx.describe(site)} reaches {what}: LayerNorm subtracts the mean, so a rotation must fix the "
                     "ones vector (add 'preserve: ones'), or use the permutation group", site)
        if len(normalize(axes[0])) != 1:
            ctx.fail(f"{what} over a composite axis {show_axis(axes[0])} carrying a rotation has no rule", site)
        if weight is not None and not _constant(ctx.param_value(weight_index)):
            ctx.fail(f"{ctx.describe(site)} reaches {what} whose gain is not constant: a rotation does not commute "
                     "with a per-feature gain (fold it into the readers with fold_layernorm; post-LN models such as "
                     "BERT keep the gain on the residual path and admit only permutations)", site)
    if bias is not None:
        same_axis(ctx, bias[0], axes[0], f"{what} bias")
    if weight is not None and all(ctx.kind(s) in PERMUTATION_LIKE for s in sites):
        same_axis(ctx, weight[0], axes[0], f"{what} gain")
    return x


@rule("layer_norm", "native_layer_norm")
def layer_norm_rule(ctx):
    return _norm(ctx, 2, 3, needs_ones=True)


@rule("rms_norm")
def rms_norm_rule(ctx):
    return _norm(ctx, 2, None, needs_ones=False)
