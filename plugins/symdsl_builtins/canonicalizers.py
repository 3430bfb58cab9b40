"""Built-in canonicalizers: untie, fold_layernorm, center_writers.

Each is function-preserving (tested in float64) and keeps the model a standard checkpoint
of its class.
"""
from __future__ import annotations

from typing import Literal

import torch

from symdsl.canon.base import Canonicalizer, StrictArgs, model_tensor, module_slot
from symdsl.errors import BindError

from .circuits import AttentionToCircuits   # the paper's circuit route (architecture-changing)


def _site_axis(resolved, tensor_name: str, site: str, want_dual: bool | None) -> int:
    """Index of the whole axis of ``tensor_name`` bound to ``site`` (optionally of a given variance)."""
    binding = resolved.tensors.get(tensor_name)
    if binding is None:
        what = "is declared invariant" if tensor_name in resolved.invariant else "has no axis pattern"
        raise BindError(f"'{tensor_name}' {what} in spec '{resolved.spec.name}', but a canonicalizer needs its "
                        f"axis bound to site '{site}': bind it under 'tensors'")
    for index, axis in enumerate(binding.axes):
        if len(axis.parts) == 1 and len(axis.parts[0]) == 1:
            f = axis.parts[0][0]
            if f.site == site and (want_dual is None or f.dual == want_dual or resolved.sites[site].kind.self_dual):
                return index
    raise BindError(f"'{tensor_name}' ({binding.pattern!r}) has no whole axis bound to site '{site}'"
                    + ("" if want_dual is None else (" (dual)" if want_dual else " (primal)")))


def _reader_sites(resolved, readers) -> set[str]:
    """The site every reader reads: common to all readers as a whole axis marked dual (');
    failing that, any common whole-axis site of a self-dual group."""
    def common(accept) -> set[str]:
        shared = None
        for name in readers:
            binding = resolved.tensors.get(name)
            found = {axis.parts[0][0].site for axis in (binding.axes if binding else ())
                     if len(axis.parts) == 1 and len(axis.parts[0]) == 1 and axis.parts[0][0].site
                     and accept(axis.parts[0][0])}
            shared = found if shared is None else shared & found
        return shared or set()

    marked = common(lambda f: f.dual)
    return marked if marked else common(lambda f: resolved.sites[f.site].kind.self_dual)


def _broadcast(vector: torch.Tensor, ndim: int, axis: int) -> torch.Tensor:
    shape = [1] * ndim
    shape[axis] = -1
    return vector.reshape(shape)


class UntieArgs(StrictArgs):
    names: list[str]


class Untie(Canonicalizer):
    """``untie: [copy, original, ...]``: give every name but the last its own copy of the shared tensor.

    Needed before folding a norm into a reader that shares its weight with a writer
    (GPT-2's lm_head / wte). Sets ``config.tie_word_embeddings = False`` when the model has
    a transformers config, so ``save_pretrained``/``from_pretrained`` keep them apart.
    """

    name = "untie"
    Args = UntieArgs
    name_fields = ("names",)

    def apply(self, model, args, resolved) -> None:
        if len(args.names) < 2:
            raise BindError("untie needs at least two tensor names")
        for name in args.names[:-1]:
            owner, _, attribute = name.rpartition(".")
            module = model.get_submodule(owner) if owner else model
            shared = model_tensor(model, name)
            setattr(module, attribute, torch.nn.Parameter(shared.detach().clone(), requires_grad=shared.requires_grad))
        for config in _configs(model):
            config.tie_word_embeddings = False

    def restore(self, model, args, resolved, context) -> str | None:
        """Tie the names again when the aligned copies agree up to what centring removed.

        A writer that ``center_writers`` centred along a site differs from its tied reader
        only along the ones vector there, which every reader of that stream (a LayerNorm)
        ignores; the tie is then restored with the uncentred values.
        """
        tensors = [model_tensor(model, name) for name in args.names]
        centred = {(writer, step.args.site) for step in resolved.canonicalize if step.name == "center_writers"
                   for writer in step.args.writers}
        exact = [t for name, t in zip(args.names, tensors) if not any(name == w for w, _ in centred)]
        keep = exact[0] if exact else tensors[-1]
        for name, tensor in zip(args.names, tensors):
            difference = tensor - keep
            sites = [site for writer, site in centred if writer == name]
            if sites:       # drop the part along the ones vector of the centred axis
                axis = _site_axis(resolved, name, sites[0], want_dual=False)
                difference = difference - difference.mean(dim=axis, keepdim=True)
            if difference.abs().max() > 1e-6 * max(float(keep.abs().max()), 1e-30):
                return (f"untie: {', '.join(args.names)} stay untied: the symmetry moved them apart (a rotation "
                        "does not commute with the folded norm gain), so the config says tie_word_embeddings=false")
        shared = torch.nn.Parameter(keep.detach().clone(), requires_grad=keep.requires_grad)
        for name in args.names:
            owner, _, attribute = name.rpartition(".")
            setattr(model.get_submodule(owner) if owner else model, attribute, shared)
        for config in _configs(model):
            config.tie_word_embeddings = True
        return f"untie: {', '.join(args.names)} tied again, as in B"

    def restore_reads(self, args) -> list[str]:
        return []                  # the aligned copies alone say whether they can be tied again


def _configs(model) -> list:
    """The model's transformers config and its text config (where they have ``tie_word_embeddings``)."""
    config = getattr(model, "config", None)
    found = [config] if config is not None and hasattr(config, "tie_word_embeddings") else []
    text = config.get_text_config() if config is not None and hasattr(config, "get_text_config") else None
    if text is not None and text is not config and hasattr(text, "tie_word_embeddings"):
        found.append(text)
    return found


class FoldArgs(StrictArgs):
    norm: str
    readers: list[str]
    site: str | None = None    # the readers' site, when the norm's gain is not bound (RMSNorm + full rotation)
    # how the stored weight w gives the gain: 'weight' (gain = w, Llama, LayerNorm) or 'one_plus'
    # (gain = 1 + w, Gemma's RMSNorm, whose weights are stored as offsets from 1)
    gain: Literal["weight", "one_plus"] = "weight"


def _gain_of(weight: torch.Tensor, form: str) -> torch.Tensor:
    """The gain a norm multiplies by, from its stored weight (d,): ``w`` or ``1 + w``."""
    return 1.0 + weight if form == "one_plus" else weight


def _stored(gain: torch.Tensor, form: str) -> torch.Tensor:
    """The stored weight (d,) that gives ``gain``: the inverse of :func:`_gain_of`."""
    return gain - 1.0 if form == "one_plus" else gain


class FoldLayerNorm(Canonicalizer):
    """``fold_layernorm: {norm: M, readers: [W, ...], site: S}``: move a norm's gain γ into its readers.

    LN(x) = γ⊙n + β = γ⊙(n + β/γ): every reader's input axis is scaled by γ, the norm keeps
    gain 1 and bias β/γ. The reader's input axis is the one bound to the norm's site.
    A gain with zeros cannot be folded (the error names the norm). With ``gain: one_plus`` the
    norm computes ``(1 + w) * n`` (Gemma): γ = 1 + w is folded and the stored ``w`` becomes 0.

    >>> from symdsl_builtins.canonicalizers import FoldArgs
    >>> FoldArgs(norm="layers.0.input_layernorm", readers=["layers.0.q.weight"], gain="one_plus").gain
    'one_plus'
    """

    name = "fold_layernorm"
    Args = FoldArgs
    name_fields = ("norm", "readers")

    def apply(self, model, args, resolved) -> None:
        weight = model_tensor(model, args.norm + ".weight")                # (d,) as stored
        gain = _gain_of(weight.detach(), args.gain).clone()                 # (d,) what the norm multiplies by
        bias = model_tensor(model, args.norm + ".bias") if args.norm + ".bias" in resolved.tensors else None
        site = self.site(args, resolved)
        tiny = torch.finfo(gain.dtype).tiny * 1e3
        if bool((gain.abs() < tiny).any()):
            zeros = (gain.abs() < tiny).nonzero().flatten().tolist()[:5]
            form = " (1 + weight)" if args.gain == "one_plus" else ""
            raise BindError(f"fold_layernorm: '{args.norm}.weight' has zero gain{form} at {zeros}; it cannot be folded")
        for reader_name in args.readers:
            reader = model_tensor(model, reader_name)
            axis = _site_axis(resolved, reader_name, site, want_dual=True)
            reader.mul_(_broadcast(gain.to(reader.dtype), reader.ndim, axis))
        if bias is not None:
            bias.div_(gain)
        weight.copy_(_stored(torch.ones_like(gain), args.gain))             # gain 1: w = 1, or w = 0 for 1 + w

    def restore(self, model, args, resolved, context) -> str | None:
        """Unfold the gain again when the site's element is a (signed) permutation P.

        Such a P commutes with the gain: the aligned readers are R diag(gamma) P^T, so the norm
        gets gain |P| gamma (B's gain, moved with the stream), bias times that gain, and the
        readers are divided by it. Any other element (a rotation) keeps the gain folded.
        """
        site = self.site(args, resolved)
        moved = context.monomial(site)
        if moved is None:
            return (f"fold_layernorm: norm gains on '{site}' stay folded into their readers (the norms have gain "
                    f"1): the alignment's element at '{site}' is not a permutation, so it does not commute with a gain")
        original = _gain_of(context.original_tensor(args.norm + ".weight").detach().to(torch.float64), args.gain)
        weight = model_tensor(model, args.norm + ".weight")
        gain = (moved @ original).to(weight.dtype)                    # (n,): B's gain, permuted with the stream
        for reader_name in args.readers:
            reader = model_tensor(model, reader_name)
            axis = _site_axis(resolved, reader_name, site, want_dual=True)
            reader.div_(_broadcast(gain.to(reader.dtype), reader.ndim, axis))
        if args.norm + ".bias" in resolved.tensors:
            model_tensor(model, args.norm + ".bias").mul_(gain)
        weight.copy_(_stored(gain, args.gain))
        return None                                  # B's own parametrisation: nothing to tell

    def restore_reads(self, args) -> list[str]:
        return [args.norm + ".weight"]               # B's gain (d,), which folding overwrote

    def site(self, args, resolved) -> str:
        """The site whose axis the gain scales (bound on the gain, named, or common to the readers)."""
        norm_binding = resolved.tensors.get(args.norm + ".weight")
        if args.site is not None:
            site = args.site
        elif norm_binding is not None and norm_binding.sites():
            site = next(iter(norm_binding.sites()))
        elif len(_reader_sites(resolved, args.readers)) == 1:
            site = _reader_sites(resolved, args.readers).pop()   # the one site every reader reads
        else:
            raise BindError(f"fold_layernorm: '{args.norm}.weight' is not bound to a site; bind it, or name the "
                            "readers' site with 'site:' (a folded RMSNorm gain under a full rotation is invariant)")
        if site not in resolved.sites:
            raise BindError(f"fold_layernorm: unknown site '{site}'")
        return site


class CenterArgs(StrictArgs):
    site: str
    writers: list[str]


class CenterWriters(Canonicalizer):
    """``center_writers: {site: resid, writers: [...]}``: subtract the mean along the site axis of every writer.

    Function-preserving when every reader of the residual stream is a LayerNorm (which
    removes the mean anyway); it removes the translation freedom along the all-ones vector,
    so two models are compared only on what they compute.
    """

    name = "center_writers"
    Args = CenterArgs
    name_fields = ("writers",)

    def apply(self, model, args, resolved) -> None:
        if args.site not in resolved.sites:
            raise BindError(f"center_writers: unknown site '{args.site}'")
        for writer_name in args.writers:
            writer = model_tensor(model, writer_name)
            axis = _site_axis(resolved, writer_name, args.site, want_dual=False)
            writer.sub_(writer.mean(dim=axis, keepdim=True))

    def restore(self, model, args, resolved, context) -> str | None:
        """Centred writers compute what B computes (every reader removes the mean): nothing to undo."""
        return None

    def restore_reads(self, args) -> list[str]:
        return []


BUILTIN_CANONICALIZERS = (Untie, FoldLayerNorm, CenterWriters)


class BiasedRMSNorm(torch.nn.Module):
    """x / rms(x) * weight + bias: what a LayerNorm computes on inputs whose mean is zero.

    Keeps the LayerNorm's parameter names (``weight``, ``bias``) so state dicts keep their keys.
    """

    def __init__(self, size: int, eps: float, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.normalized_shape, self.eps = (size,), eps
        self.weight = torch.nn.Parameter(weight.detach().clone())
        self.bias = torch.nn.Parameter(bias.detach().clone()) if bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.nn.functional.rms_norm(x, self.normalized_shape, self.weight, self.eps)
        return out + self.bias if self.bias is not None else out


class RMSArgs(StrictArgs):
    norms: list[str]


class LayerNormToRMSNorm(Canonicalizer):
    """``layernorm_to_rmsnorm: [norm, ...]``: replace LayerNorms by RMSNorm + bias (the paper's route).

    **Changes the architecture**: the result is no longer a standard checkpoint of its class.
    Exact when every writer into the normalised stream is mean-centred (``center_writers``
    first): then mean(x) = 0 and LayerNorm(x) = x / rms(x). RMSNorm commutes with *every*
    rotation, so the residual site may drop ``preserve: ones``.
    """

    name = "layernorm_to_rmsnorm"
    Args = RMSArgs
    name_fields = ("norms",)
    changes_architecture = True

    def apply(self, model, args, resolved) -> None:
        for path in args.norms:
            parent, attribute, norm = module_slot(model, path)
            if not isinstance(norm, torch.nn.LayerNorm):
                if isinstance(norm, BiasedRMSNorm):
                    continue   # already converted
                raise BindError(f"layernorm_to_rmsnorm: '{path}' is a {type(norm).__name__}, not a LayerNorm")
            if len(norm.normalized_shape) != 1:
                raise BindError(f"layernorm_to_rmsnorm: '{path}' normalises over several axes")
            weight = norm.weight if norm.weight is not None else torch.ones(norm.normalized_shape)
            setattr(parent, attribute, BiasedRMSNorm(norm.normalized_shape[0], norm.eps, weight, norm.bias))


BUILTIN_CANONICALIZERS = BUILTIN_CANONICALIZERS + (LayerNormToRMSNorm, AttentionToCircuits)
