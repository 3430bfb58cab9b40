"""The paper's circuit route: attention heads rewritten as QK and OV circuits (architecture-changing).

With biases, head a of a self-attention layer reads the augmented token x~ = [x; 1] (size D+1):

    score(t, s) = scale * x~_t^T W_QK[a] x~_s        W_QK[a] = [W_q b_q]_a^T [W_k b_k]_a   (D+1, D+1)
    output(t)   = sum_a sum_s softmax_s(score) W_OV[a] x~_s + b_o,
                                                    W_OV[a] = W_o[:, a] [W_v b_v]_a        (D_out, D+1)

A per-head invertible map G on queries (G) and keys (G^-T) leaves W_QK unchanged, and one on
values and the output projection leaves W_OV unchanged: in circuit form those symmetries are
gone, and interpolating two models interpolates their circuits. The rewrite is exact but the
model is **no longer a standard checkpoint** (its attention parameters are circuits, of rank at
most head_dim before interpolation and up to twice that after).
"""
from __future__ import annotations

import torch

from symdsl.canon.base import Canonicalizer, StrictArgs, module_slot
from symdsl.errors import BindError


def augment(x: torch.Tensor) -> torch.Tensor:
    """``[x; 1]`` along the last axis: (..., D) -> (..., D+1).

    The ones come from ``torch.ones`` (no input), so the traced graph shows a constant joined to
    the residual stream, which the static check types as the fused axis ``[resid | 1]``.

    >>> augment(torch.tensor([[2.0, 3.0]]))
    tensor([[2., 3., 1.]])
    """
    ones = torch.ones(*x.shape[:-1], 1, dtype=x.dtype, device=x.device)
    return torch.cat([x, ones], dim=-1)


def head_circuits(w_q: torch.Tensor, b_q: torch.Tensor, w_k: torch.Tensor, b_k: torch.Tensor, w_v: torch.Tensor,
                  b_v: torch.Tensor, w_o: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_QK, W_OV) of every head from ``nn.Linear``-layout factors, computed in float64.

    ``w_q``, ``w_k``, ``w_v``: (heads * k, D) with rows head-major; ``b_*``: (heads * k,);
    ``w_o``: (D_out, heads * k). Returns W_QK (heads, D+1, D+1) and W_OV (heads, D_out, D+1).

    >>> wq, wk, wv, wo = torch.eye(2), torch.eye(2), torch.eye(2), torch.eye(2)
    >>> qk, ov = head_circuits(wq, torch.zeros(2), wk, torch.ones(2), wv, torch.zeros(2), wo, heads=2)
    >>> qk.shape, ov.shape, qk[0].tolist()
    (torch.Size([2, 3, 3]), torch.Size([2, 2, 3]), [[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    """
    def per_head(w, b):   # (heads * k, D), (heads * k,) -> (heads, k, D+1): each head's [W b]
        joined = torch.cat([w, b[:, None]], dim=1).double()
        return joined.reshape(heads, -1, joined.shape[1])

    q, k, v = per_head(w_q, b_q), per_head(w_k, b_k), per_head(w_v, b_v)
    o = w_o.double().reshape(w_o.shape[0], heads, -1).permute(1, 0, 2)     # (heads, D_out, k)
    return q.mT @ k, o @ v


class CircuitAttention(torch.nn.Module):
    """Multi-head self-attention held as circuits: ``w_qk`` (h, D+1, D+1), ``w_ov`` (h, D_out, D+1), ``b_o``.

    :meth:`attend` is the computation; subclasses give it the forward signature the
    surrounding block calls (HF GPT-2, timm ViT). ``num_heads`` and ``head_dim`` are kept so
    spec dims such as ``attr("blocks.0.attn.num_heads")`` read the same in both forms.
    """

    def __init__(self, w_qk: torch.Tensor, w_ov: torch.Tensor, b_o: torch.Tensor, *, scale: float, head_dim: int,
                 attn_drop: float = 0.0, out_drop: float = 0.0):
        super().__init__()
        self.num_heads, self.head_dim, self.scale = w_qk.shape[0], head_dim, float(scale)
        self.w_qk = torch.nn.Parameter(w_qk)
        self.w_ov = torch.nn.Parameter(w_ov)
        self.b_o = torch.nn.Parameter(b_o)
        self.attn_drop = torch.nn.Dropout(attn_drop)
        self.out_drop = torch.nn.Dropout(out_drop)

    def attend(self, queries: torch.Tensor, keys: torch.Tensor,
               bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention output (B, T, D_out) and weights (B, h, T, S) from augmented tokens.

        ``queries`` (B, T, D+1) and ``keys`` (B, S, D+1) are augmented tokens ``[x; 1]``;
        ``bias`` an additive mask broadcastable to (B, h, T, S) (0 where attended).
        """
        read = torch.matmul(queries.unsqueeze(1), self.w_qk)                  # (B, h, T, D+1): x~_t^T W_QK
        scores = torch.matmul(read, keys.unsqueeze(1).transpose(-1, -2)) * self.scale   # (B, h, T, S)
        if bias is not None:
            scores = scores + bias
        weights = self.attn_drop(torch.softmax(scores, dim=-1))
        values = torch.matmul(keys.unsqueeze(1), self.w_ov.transpose(-1, -2))  # (B, h, S, D_out): W_OV x~_s
        out = torch.matmul(weights, values).sum(dim=1) + self.b_o              # heads summed: (B, T, D_out)
        return self.out_drop(out), weights


def _mask_bias(keep: torch.Tensor | None, mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """One additive mask from a boolean keep-mask (True: attend) and a user mask (bool keep-mask or additive).

    Masked entries get the dtype's most negative finite value, as HF's eager attention does, so a
    row with every key masked (a padding query) stays finite instead of turning the layer to NaN.
    """
    if mask is not None and mask.dtype == torch.bool:
        keep = mask if keep is None else keep & mask
        mask = None
    if keep is None:
        return mask
    bias = torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(~keep, torch.finfo(dtype).min)
    return bias if mask is None else bias + mask


def _causal(queries: int, keys: int, device) -> torch.Tensor:
    """(T, S) boolean keep-mask: the last ``queries`` of ``keys`` positions see themselves and earlier ones."""
    return torch.ones(queries, keys, dtype=torch.bool, device=device).tril(keys - queries)


class GPT2CircuitAttention(CircuitAttention):
    """Circuit form of HF ``GPT2Attention`` (causal self-attention), with its forward signature.

    ``GPT2Block`` calls ``attn(hidden_states, cache=..., attention_mask=..., use_cache=..., **kwargs)``
    and reads ``(output, weights)``. A cache (``DynamicCache``) stores the augmented tokens of
    earlier positions in place of keys and values, so generation keeps working.
    """

    def __init__(self, *args, layer_idx: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.layer_idx = layer_idx

    def forward(self, hidden_states: torch.Tensor, cache=None, attention_mask: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None, encoder_attention_mask=None,
                output_attentions: bool | None = False, past_key_values=None, **kwargs):
        if encoder_hidden_states is not None:
            raise BindError("GPT2CircuitAttention is self-attention only; cross-attention was not rewritten")
        cache = cache if cache is not None else past_key_values
        queries = augment(hidden_states)                                      # (B, T, D+1)
        keys = queries
        if cache is not None:
            layers = getattr(cache, "self_attention_cache", cache)            # EncoderDecoderCache: its self part
            keys, _ = layers.update(queries.unsqueeze(1), queries.unsqueeze(1), self.layer_idx)
            keys = keys.squeeze(1)                                            # (B, S, D+1), S >= T
        causal = _causal(queries.shape[1], keys.shape[1], queries.device)
        return self.attend(queries, keys, _mask_bias(causal, attention_mask, queries.dtype))


class ViTCircuitAttention(CircuitAttention):
    """Circuit form of timm's ``Attention``, with its forward signature ``(x, attn_mask=None, is_causal=False)``."""

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        tokens = augment(x)
        # timm: is_causal takes precedence over attn_mask
        causal = _causal(x.shape[1], x.shape[1], x.device) if is_causal else None
        return self.attend(tokens, tokens, _mask_bias(causal, None if is_causal else attn_mask, x.dtype))[0]


def _from_gpt2(module) -> GPT2CircuitAttention:
    if module.is_cross_attention:
        raise BindError("attention_to_circuits: GPT-2 cross-attention has no circuit form here")
    d, h = module.embed_dim, module.num_heads
    weight, bias = module.c_attn.weight.T, module.c_attn.bias          # Conv1D (D, 3D) stored (in, out)
    w_q, w_k, w_v = weight.split(d, dim=0)
    b_q, b_k, b_v = bias.split(d)
    qk, ov = head_circuits(w_q, b_q, w_k, b_k, w_v, b_v, module.c_proj.weight.T, h)
    dtype = weight.dtype
    return GPT2CircuitAttention(qk.to(dtype), ov.to(dtype), module.c_proj.bias.detach().clone(),
                                scale=module.scaling, head_dim=module.head_dim, layer_idx=module.layer_idx,
                                attn_drop=module.attn_dropout.p, out_drop=module.resid_dropout.p)


def _from_timm(path: str, module) -> ViTCircuitAttention:
    for name in ("q_norm", "k_norm", "norm"):
        if not isinstance(getattr(module, name, torch.nn.Identity()), torch.nn.Identity):
            raise BindError(f"attention_to_circuits: '{path}' has a {name} layer; normalised queries/keys or outputs "
                            "have no circuit form")
    if getattr(module, "gate", None) is not None:
        raise BindError(f"attention_to_circuits: '{path}' is gated; a gated attention has no circuit form")
    h, attn_dim = module.num_heads, module.num_heads * module.head_dim
    weight = module.qkv.weight                                          # (3 * attn_dim, D), nn.Linear (out, in)
    bias = module.qkv.bias if module.qkv.bias is not None else weight.new_zeros(weight.shape[0])
    w_q, w_k, w_v = weight.split(attn_dim, dim=0)
    b_q, b_k, b_v = bias.split(attn_dim)
    qk, ov = head_circuits(w_q, b_q, w_k, b_k, w_v, b_v, module.proj.weight, h)
    b_o = module.proj.bias if module.proj.bias is not None else weight.new_zeros(module.proj.weight.shape[0])
    return ViTCircuitAttention(qk.to(weight.dtype), ov.to(weight.dtype), b_o.detach().clone(), scale=module.scale,
                               head_dim=module.head_dim, attn_drop=module.attn_drop.p, out_drop=module.proj_drop.p)


def to_circuits(path: str, module: torch.nn.Module) -> CircuitAttention:
    """The circuit form of one attention module (HF ``GPT2Attention`` or timm ``Attention``).

    The result has the module's dtype, device and training mode (dropout stays as it was).
    """
    kind = f"{type(module).__module__}.{type(module).__name__}"
    device = next(module.parameters()).device
    if type(module).__name__ == "GPT2Attention" and hasattr(module, "c_attn"):
        return _from_gpt2(module).to(device).train(module.training)
    if kind == "timm.layers.attention.Attention":
        return _from_timm(path, module).to(device).train(module.training)
    raise BindError(f"attention_to_circuits: '{path}' is a {kind}; supported: transformers GPT2Attention and "
                    "timm.layers.attention.Attention (timm.models.vision_transformer.Attention)")


class CircuitArgs(StrictArgs):
    modules: list[str]


class AttentionToCircuits(Canonicalizer):
    """``attention_to_circuits: {modules: [M, ...]}``: replace attention modules by their QK/OV circuits.

    **Changes the architecture** (the paper's route): each module becomes a
    :class:`CircuitAttention` with parameters ``w_qk`` (h, D+1, D+1), ``w_ov`` (h, D_out, D+1) and
    ``b_o`` (D_out,), computing the same function. The per-head invertible q/k and v/o
    symmetries vanish (circuits are invariant to them); the head permutation acts on their
    leading axis. The spec binds the new tensors in its ``canonical`` section.
    """

    name = "attention_to_circuits"
    Args = CircuitArgs
    name_fields = ("modules",)
    changes_architecture = True

    def apply(self, model, args, resolved) -> None:
        for path in args.modules:
            parent, attribute, module = module_slot(model, path)
            if isinstance(module, CircuitAttention):
                continue   # already converted
            if not isinstance(module, torch.nn.Module):
                raise BindError(f"attention_to_circuits: the model has no module '{path}'")
            setattr(parent, attribute, to_circuits(path, module))
