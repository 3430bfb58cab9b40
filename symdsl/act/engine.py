"""The action engine: apply a Transform (site -> group element) to tensors through a ResolvedSpec.

One generic routine serves every tensor: each bound axis (or part of a fused axis) is
reshaped into its factors, and each factor bound to a site is contracted with that site's
element (primal) or its dual (g^-T). Sites declared ``per`` another are applied after the
others, batched along their parent's (already transformed) axis, so that for a head site
``heads`` and a per-head map ``qk`` the composite acts as  y[a] = G[a] @ x[perm[a]].
"""
from __future__ import annotations

from typing import Mapping

import torch

from ..errors import BindError
from ..spec.binding import BoundAxis, ResolvedSpec, SiteDef, TensorBinding
from ..spec.views import map_parts

Elements = Mapping[str, torch.Tensor]
_HALF = (torch.float16, torch.bfloat16)     # storage dtypes the engine upcasts per tensor to compute in


def _parent_dim(binding: TensorBinding, axis_index: int, part, site: SiteDef, n_factors: int) -> int:
    """Where the ``per`` parent of ``site`` sits once axis ``axis_index`` is reshaped into ``n_factors`` dims."""
    def is_parent(f) -> bool:
        return f.site == site.per if f.site else f.dim == site.per

    for j, f in enumerate(part):
        if is_parent(f):
            return axis_index + j
    for other_index, axis in enumerate(binding.axes):
        whole = len(axis.parts) == 1 and len(axis.parts[0]) == 1
        if other_index != axis_index and whole and is_parent(axis.parts[0][0]):
            return other_index if other_index < axis_index else other_index + n_factors - 1
    raise BindError(f"tensor '{binding.name}': site '{site.name}' is per '{site.per}', which must be a factor of the "
                    f"same axis or a whole unsplit axis of the same tensor")


def _act_axis(x: torch.Tensor, binding: TensorBinding, axis_index: int, axis: BoundAxis, elements: Elements,
              sites: Mapping[str, SiteDef], per_pass: bool) -> torch.Tensor:
    wanted = [(f, sites[f.site]) for part in axis.parts for f in part
              if f.site and f.site in elements and (sites[f.site].per is not None) == per_pass]
    if not wanted:
        return x

    def act_part(y: torch.Tensor, p: int) -> torch.Tensor:
        # y: the part's entries with its factors as dims axis_index ... axis_index + len(part) - 1;
        # a factor a nested split shares (heads in (heads [qk | qkp])) is moved once per part,
        # which moves it once on the whole axis
        part = axis.parts[p]
        for j, f in enumerate(part):
            site = sites.get(f.site) if f.site else None
            if site is None or f.site is None or f.site not in elements or (site.per is not None) != per_pass:
                continue
            batch_dim = _parent_dim(binding, axis_index, part, site, len(part)) if per_pass else None
            y = site.kind.apply(elements[f.site], y, axis_index + j, dual=f.dual, batch_dim=batch_dim)
        return y

    return map_parts(x, axis_index, axis, act_part)


def act_tensor(x: torch.Tensor, binding: TensorBinding, elements: Elements, sites: Mapping[str, SiteDef]) -> torch.Tensor:
    """Apply the elements to one tensor. Sites missing from ``elements`` act as the identity.

    >>> from symdsl.plugins import load
    >>> import torch
    >>> from symdsl.spec import load_spec_text, resolve
    >>> spec = load_spec_text('symdsl: 1\\nname: t\\nsites: {h: {group: permutation, size: 3}}\\n'
    ...                       'tensors: {weight: "h _", bias: h}\\n')
    >>> r = resolve(spec, torch.nn.Linear(2, 3), registries=load())
    >>> w = torch.arange(6.).reshape(3, 2)
    >>> act_tensor(w, r.tensors["weight"], {"h": torch.tensor([2, 0, 1])}, r.sites)
    tensor([[4., 5.],
            [0., 1.],
            [2., 3.]])
    """
    for per_pass in (False, True):  # parents (e.g. head permutations) before per-index maps
        for axis_index, axis in enumerate(binding.axes):
            x = _act_axis(x, binding, axis_index, axis, elements, sites, per_pass)
    return x


def act_state_dict(resolved: ResolvedSpec, state: Mapping[str, torch.Tensor], elements: Elements) -> dict[str, torch.Tensor]:
    """A new state dict with every bound tensor transformed; unbound tensors are passed through.

    dtype and device of each tensor are preserved. A half-precision tensor (bfloat16, float16)
    is transformed in float32 and rounded once into its dtype, one tensor at a time: a rotation
    cast to bfloat16 and applied in bfloat16 would add rounding error in every product, and a
    float32 copy of the whole state dict is what large checkpoints cannot afford.
    Other tensors are transformed in their own dtype (elements are cast to it).

    >>> from symdsl.plugins import load
    >>> from symdsl.spec import load_spec_text, resolve
    >>> spec = load_spec_text('symdsl: 1\\nname: t\\nsites: {h: {group: orthogonal, size: 2}}\\n'
    ...                       'tensors: {weight: "h _", bias: h}\\n')
    >>> r = resolve(spec, torch.nn.Linear(2, 2), registries=load())
    >>> out = act_state_dict(r, {"weight": torch.eye(2, dtype=torch.bfloat16), "bias": torch.ones(2)},
    ...                      {"h": torch.tensor([[0.6, -0.8], [0.8, 0.6]], dtype=torch.float64)})
    >>> out["weight"].dtype, out["weight"].tolist()
    (torch.bfloat16, [[0.6015625, -0.80078125], [0.80078125, 0.6015625]])
    """
    unknown = [s for s in elements if s not in resolved.sites]
    if unknown:
        raise BindError(f"transform names sites not in spec '{resolved.spec.name}': {unknown[:5]}")
    out = {}
    with torch.no_grad():
        for name, tensor in state.items():
            binding = resolved.tensors.get(name)
            if binding is None:
                out[name] = tensor
            elif tensor.dtype in _HALF:      # (shape of tensor) computed in float32, rounded once
                out[name] = act_tensor(tensor.float(), binding, elements, resolved.sites).to(tensor.dtype)
            else:
                out[name] = act_tensor(tensor, binding, elements, resolved.sites)
    return out


def act_model(resolved: ResolvedSpec, model: torch.nn.Module, elements: Elements) -> torch.nn.Module:
    """Transform a model's parameters in place (square groups only: shapes must not change)."""
    state = model.state_dict()
    new = act_state_dict(resolved, state, elements)
    with torch.no_grad():
        for name, tensor in new.items():
            if tensor is not state[name]:
                if tensor.shape != state[name].shape:
                    raise BindError(f"'{name}' would change shape {tuple(state[name].shape)} -> {tuple(tensor.shape)}; "
                                    "rectangular transforms produce a new state dict, use act_state_dict")
                state[name].copy_(tensor)
    return model


def act_outputs(resolved: ResolvedSpec, outputs: Mapping[str, torch.Tensor], elements: Elements) -> dict[str, torch.Tensor]:
    """Transform model outputs declared equivariant in the spec's ``outputs`` section."""
    return {name: act_tensor(value, resolved.outputs[name], elements, resolved.sites) if name in resolved.outputs else value
            for name, value in outputs.items()}

