"""The paper's weight matching for GPT-2, written from its description, beside symdsl's on the same pair.

Usage (from the repository root; trains and caches the BPE pair first if needed, see bpe_pair.py)::

    python benchmarks/wm_reference.py                 # table on stdout, JSON to benchmarks/wm_reference.json
    python benchmarks/wm_reference.py --results       # also rewrite its section of benchmarks/RESULTS.md

The reference (Theus et al. 2025, "Generalized Linear Mode Connectivity for Transformers", weight
matching) changes the architecture, as the paper does:

1. LayerNorm -> RMSNorm. Every writer to the residual stream (token and position embeddings,
   attention and MLP output projections and biases) is centred (projected onto the complement of
   the all-ones vector), so the stream is centred and LayerNorm(x) = RMSNorm(x); the norm gains and
   biases are folded into the layers that read the norm's output (the final norm's into the
   unembedding and a logit bias). The converted model (:class:`RMSGPT`) computes the same function.
2. The residual stream then has a full orthogonal symmetry Q (d x d): solved by Procrustes on every
   tensor that touches the stream, embedding and unembedding rows weighted by token frequency.
3. MLP units: one permutation per layer, by linear assignment.
4. Attention: heads permuted per layer by assignment on the QK and OV circuits (W_Q W_K^T and
   W_V W_O, invariant to the per-head maps), then per head an orthogonal map on the query/key
   side and one on the value/output side, each by Procrustes.
5. 15 iterations of (2)-(4); the first residual solve uses only the tensors no other map touches
   (embeddings, unembedding, output biases), since the others are not yet aligned.

Both methods are timed in the same process, one thread, and both barriers are measured by
``symdsl.evaluate`` (``loss_curve`` + ``barrier``, paper definition, 11 points) on the same test
split: symdsl's on the standard ``GPT2LMHeadModel``, the reference's on its converted model.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

ROOT = Path(__file__).resolve().parents[1]
ITERATIONS = 15
HEADING = "## Weight matching beside the paper's algorithm (BPE GPT-2, `benchmarks/wm_reference.py`)"


# ---------------------------------------------------------------- 1. LayerNorm -> RMSNorm

def _centre(d: int, dtype) -> torch.Tensor:
    """(d, d) projection onto the complement of the all-ones vector."""
    return torch.eye(d, dtype=dtype) - torch.full((d, d), 1.0 / d, dtype=dtype)


def to_rms(model, dtype=torch.float64) -> dict[str, torch.Tensor]:
    """A ``GPT2LMHeadModel``'s weights in the RMSNorm form (keys below); same function (see RMSGPT).

    Conv1D layers compute x @ W + b with W (in, out). Keys: ``wte`` (V, d), ``wpe`` (T, d), per layer
    ``h{i}.qkv_w`` (d, 3d), ``.qkv_b``, ``.o_w`` (d, d), ``.o_b``, ``.fc_w`` (d, n), ``.fc_b``,
    ``.pr_w`` (n, d), ``.pr_b``; ``unembed`` (V, d), ``logit_bias`` (V,).
    """
    s = {k: v.detach().to(dtype) for k, v in model.state_dict().items()}
    d = s["transformer.wte.weight"].shape[1]
    c = _centre(d, dtype)
    out = {"wte": s["transformer.wte.weight"] @ c, "wpe": s["transformer.wpe.weight"] @ c}
    for i in range(model.config.n_layer):
        p = f"transformer.h.{i}."
        g1, b1 = s[p + "ln_1.weight"], s[p + "ln_1.bias"]
        g2, b2 = s[p + "ln_2.weight"], s[p + "ln_2.bias"]
        qkv, fc = s[p + "attn.c_attn.weight"], s[p + "mlp.c_fc.weight"]
        # readers: rows scaled by the gain (the normalised input is centred, so c @ ... changes nothing)
        out[f"h{i}.qkv_w"] = c @ (g1[:, None] * qkv)
        out[f"h{i}.qkv_b"] = b1 @ qkv + s[p + "attn.c_attn.bias"]
        out[f"h{i}.o_w"] = s[p + "attn.c_proj.weight"] @ c           # writers: centred columns
        out[f"h{i}.o_b"] = s[p + "attn.c_proj.bias"] @ c
        out[f"h{i}.fc_w"] = c @ (g2[:, None] * fc)
        out[f"h{i}.fc_b"] = b2 @ fc + s[p + "mlp.c_fc.bias"]
        out[f"h{i}.pr_w"] = s[p + "mlp.c_proj.weight"] @ c
        out[f"h{i}.pr_b"] = s[p + "mlp.c_proj.bias"] @ c
    lm, gf, bf = s["lm_head.weight"], s["transformer.ln_f.weight"], s["transformer.ln_f.bias"]
    out["unembed"] = (lm * gf) @ c                                     # (V, d)
    out["logit_bias"] = lm @ bf                                        # (V,)
    return out


class RMSGPT(torch.nn.Module):
    """GPT-2 with RMSNorm and no norm gains: what :func:`to_rms` produces, evaluated by symdsl's
    ``loss_curve`` (``forward(input_ids)`` returns logits (B, T, V))."""

    def __init__(self, state: dict[str, torch.Tensor], n_head: int, eps: float = 1e-5):
        super().__init__()
        self.n_head, self.eps = n_head, eps
        self.n_layer = sum(1 for k in state if k.endswith(".qkv_w"))
        for key, value in state.items():
            self.register_parameter(key.replace(".", "_"), torch.nn.Parameter(value.clone(), requires_grad=False))

    def state_dict(self, *args, **kwargs):
        return {k.replace("_", ".", 1) if k.startswith("h") else k: v
                for k, v in super().state_dict(*args, **kwargs).items()}

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        return super().load_state_dict({k.replace(".", "_"): v for k, v in state.items()}, strict=strict, assign=assign)

    def _rms(self, x):
        return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + self.eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        p = dict(self.named_parameters())
        b, t = input_ids.shape
        x = p["wte"][input_ids] + p["wpe"][:t]                                     # (B, T, d)
        d, h = x.shape[-1], self.n_head
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        for i in range(self.n_layer):
            qkv = self._rms(x) @ p[f"h{i}_qkv_w"] + p[f"h{i}_qkv_b"]               # (B, T, 3d)
            q, k, v = (z.reshape(b, t, h, d // h).transpose(1, 2) for z in qkv.split(d, -1))   # (B, H, T, dh)
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(d // h)
            att = scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v          # (B, H, T, dh)
            x = x + att.transpose(1, 2).reshape(b, t, d) @ p[f"h{i}_o_w"] + p[f"h{i}_o_b"]
            up = F.gelu(self._rms(x) @ p[f"h{i}_fc_w"] + p[f"h{i}_fc_b"], approximate="tanh")
            x = x + up @ p[f"h{i}_pr_w"] + p[f"h{i}_pr_b"]
        return self._rms(x) @ p["unembed"].T + p["logit_bias"]


# ---------------------------------------------------------------- the group action

def identity_elements(state, n_head: int) -> dict:
    d = state["wte"].shape[1]
    dh, dtype = d // n_head, state["wte"].dtype
    out = {"Q": torch.eye(d, dtype=dtype)}
    layers = sum(1 for k in state if k.endswith(".qkv_w"))
    for i in range(layers):
        out[f"mlp{i}"] = torch.arange(state[f"h{i}.fc_b"].numel())
        out[f"heads{i}"] = torch.arange(n_head)
        out[f"qk{i}"] = torch.eye(dh, dtype=dtype).expand(n_head, dh, dh).clone()
        out[f"ov{i}"] = torch.eye(dh, dtype=dtype).expand(n_head, dh, dh).clone()
    return out


def _heads(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """(..., d) -> (..., H, dh)."""
    return w.reshape(*w.shape[:-1], n_head, w.shape[-1] // n_head)


def _attention_maps(state, e, i, n_head, q_rows):
    """Query/key/value weights (d+1 rows: weights, then bias) with the head maps applied: (3, d+1, H, dh)."""
    d = state["wte"].shape[1]
    w = torch.cat([q_rows, state[f"h{i}.qkv_b"][None]], 0)                      # (d+1, 3d)
    q, k, v = (_heads(z, n_head)[:, e[f"heads{i}"]] for z in w.split(d, -1))    # (d+1, H, dh)
    q = torch.einsum("rhk,hkl->rhl", q, e[f"qk{i}"])
    k = torch.einsum("rhk,hkl->rhl", k, e[f"qk{i}"])
    v = torch.einsum("rhk,hkl->rhl", v, e[f"ov{i}"])
    return q, k, v


def apply(state: dict, e: dict, n_head: int) -> dict:
    """B's weights moved by elements ``e`` (function-preserving in the RMSNorm form)."""
    Q = e["Q"]
    out = {"wte": state["wte"] @ Q, "wpe": state["wpe"] @ Q, "unembed": state["unembed"] @ Q,
           "logit_bias": state["logit_bias"]}
    d = Q.shape[0]
    for i in range(sum(1 for k in state if k.endswith(".qkv_w"))):
        q, k, v = _attention_maps(state, e, i, n_head, Q.T @ state[f"h{i}.qkv_w"])
        qkv = torch.cat([z.reshape(d + 1, d) for z in (q, k, v)], -1)
        out[f"h{i}.qkv_w"], out[f"h{i}.qkv_b"] = qkv[:-1], qkv[-1]
        o = _heads(state[f"h{i}.o_w"].T, n_head)[:, e[f"heads{i}"]]               # (d_out, H, dh)
        o = torch.einsum("rhk,hkl->rhl", o, e[f"ov{i}"])                          # rows of head h: N_h^T o_h
        out[f"h{i}.o_w"] = o.reshape(d, d).T @ Q
        out[f"h{i}.o_b"] = state[f"h{i}.o_b"] @ Q
        perm = e[f"mlp{i}"]
        out[f"h{i}.fc_w"] = Q.T @ state[f"h{i}.fc_w"][:, perm]
        out[f"h{i}.fc_b"] = state[f"h{i}.fc_b"][perm]
        out[f"h{i}.pr_w"] = state[f"h{i}.pr_w"][perm] @ Q
        out[f"h{i}.pr_b"] = state[f"h{i}.pr_b"] @ Q
    return out


# ---------------------------------------------------------------- 2-5. weight matching

def _procrustes(m: torch.Tensor) -> torch.Tensor:
    """argmax over orthogonal R of tr(R^T m): U V^T of m's SVD (batched)."""
    u, _, vh = torch.linalg.svd(m)
    return u @ vh


def _assign(score: torch.Tensor) -> torch.Tensor:
    rows, cols = linear_sum_assignment(score.detach().cpu().double().numpy(), maximize=True)
    return torch.as_tensor(cols)[torch.as_tensor(rows).argsort()]


def _residual_terms(a, b_moved, weights, anchors_only: bool):
    """(A_t, B_t) with the residual axis last, for every tensor the residual map Q touches.

    ``b_moved`` is B with every map except Q applied (Q = identity in it)."""
    sw = weights.sqrt()[:, None] if weights is not None else 1.0
    pairs = [(a["wte"] * sw, b_moved["wte"] * sw), (a["wpe"], b_moved["wpe"]),
             (a["unembed"] * sw, b_moved["unembed"] * sw)]
    for i in range(sum(1 for k in a if k.endswith(".qkv_w"))):
        pairs += [(a[f"h{i}.o_b"][None], b_moved[f"h{i}.o_b"][None]),
                  (a[f"h{i}.pr_b"][None], b_moved[f"h{i}.pr_b"][None])]
        if not anchors_only:
            pairs += [(a[f"h{i}.qkv_w"].T, b_moved[f"h{i}.qkv_w"].T), (a[f"h{i}.o_w"], b_moved[f"h{i}.o_w"]),
                      (a[f"h{i}.fc_w"].T, b_moved[f"h{i}.fc_w"].T), (a[f"h{i}.pr_w"], b_moved[f"h{i}.pr_w"])]
    return pairs


def reference_match(a: dict, b: dict, n_head: int, token_weights: torch.Tensor | None = None,
                    iterations: int = ITERATIONS) -> tuple[dict, list[float]]:
    """Elements aligning B to A (both in the RMSNorm form), and the weighted distance after each iteration."""
    e = identity_elements(b, n_head)
    layers = sum(1 for k in a if k.endswith(".qkv_w"))
    d = a["wte"].shape[1]
    history = []
    for it in range(iterations):
        # residual rotation: Procrustes on every residual tensor, B moved by all other maps
        b_other = apply(b, {**e, "Q": torch.eye(d, dtype=e["Q"].dtype)}, n_head)
        m = sum(bt.T @ at for at, bt in _residual_terms(a, b_other, token_weights, anchors_only=it == 0))
        e["Q"] = _procrustes(m)
        Q = e["Q"]
        for i in range(layers):
            # MLP units: assignment on incoming weights + bias and outgoing weights
            fc_b = Q.T @ b[f"h{i}.fc_w"]                                           # (d, n)
            pr_b = b[f"h{i}.pr_w"] @ Q                                             # (n, d)
            score = a[f"h{i}.fc_w"].T @ fc_b + torch.outer(a[f"h{i}.fc_b"], b[f"h{i}.fc_b"]) \
                + a[f"h{i}.pr_w"] @ pr_b.T                                         # (n, n)
            e[f"mlp{i}"] = _assign(score)
            # attention heads: circuits, invariant to the per-head maps, pick the head order
            ident = {f"heads{i}": torch.arange(n_head), f"qk{i}": identity_elements(b, n_head)[f"qk{i}"],
                     f"ov{i}": identity_elements(b, n_head)[f"ov{i}"]}
            qa, ka, va = _attention_maps(a, ident, i, n_head, a[f"h{i}.qkv_w"])     # (d+1, H, dh)
            qb, kb, vb = _attention_maps(b, ident, i, n_head, Q.T @ b[f"h{i}.qkv_w"])
            oa = _heads(a[f"h{i}.o_w"].T, n_head)                                   # (d, H, dh)
            ob = _heads((b[f"h{i}.o_w"] @ Q).T, n_head)
            qk_a, qk_b = torch.einsum("rhk,shk->hrs", qa, ka), torch.einsum("rhk,shk->hrs", qb, kb)
            ov_a, ov_b = torch.einsum("rhk,shk->hrs", va, oa), torch.einsum("rhk,shk->hrs", vb, ob)
            score = torch.einsum("prs,qrs->pq", qk_a, qk_b) + torch.einsum("prs,qrs->pq", ov_a, ov_b)   # (H, H)
            perm = _assign(score)
            e[f"heads{i}"] = perm
            # per head: orthogonal query/key map (acts as M on both) and value/output map, by Procrustes
            qk_src = torch.cat([qb[:, perm], kb[:, perm]], 0)                        # (2d+2, H, dh)
            qk_dst = torch.cat([qa, ka], 0)
            e[f"qk{i}"] = _procrustes(torch.einsum("rhk,rhl->hkl", qk_src, qk_dst))
            ov_src = torch.cat([vb[:, perm], ob[:, perm]], 0)
            ov_dst = torch.cat([va, oa], 0)
            e[f"ov{i}"] = _procrustes(torch.einsum("rhk,rhl->hkl", ov_src, ov_dst))
        history.append(weighted_distance(a, apply(b, e, n_head), token_weights))
    return e, history


def weighted_distance(a: dict, b: dict, token_weights=None) -> float:
    """Relative distance ||A - B|| / ||A|| over the matched tensors, vocabulary rows weighted."""
    num = den = 0.0
    for key in a:
        if key == "logit_bias":
            continue
        w = token_weights[:, None] if token_weights is not None and key in ("wte", "unembed") else 1.0
        num += float((w * (a[key] - b[key]) ** 2).sum())
        den += float((w * a[key] ** 2).sum())
    return (num / den) ** 0.5


def frequency_weights(dataset) -> torch.Tensor:
    """(V,) token counts of the train split, scaled to a total of the number of ids seen."""
    counts = torch.bincount(dataset.train.stream, minlength=dataset.vocab_size).double()
    return counts * (float((counts > 0).sum()) / float(counts.sum()))


# ---------------------------------------------------------------- the comparison

SYMDSL_ROWS = [   # (label, options, with data)
    ("symdsl weight matching, default (data: sqrt of token counts)", {}, True),
    ("symdsl weight matching, token_weighting=counts", {"token_weighting": "counts"}, True),
    ("symdsl weight matching, token_weighting=mask", {"token_weighting": "mask"}, True),
    ("symdsl weight matching, no data (every row alike)", {}, False),
]


def run(models, dataset, say=print, max_batches=None) -> dict:
    from symdsl.act import act_state_dict
    from symdsl.api.pipeline import match, prepare
    from symdsl.evaluate import barrier, loss_curve

    rows = {}

    def curve(model, sa, sb):
        b = barrier(loss_curve(model, sa, sb, dataset, max_batches=max_batches))
        return b.loss, b.accuracy

    prepared = prepare(models, "hf-gpt2")
    vanilla = curve(prepared.models[0], prepared.states[0], prepared.states[1])
    rows["vanilla averaging"] = {"loss": vanilla[0], "accuracy": vanilla[1], "seconds": 0.0}
    say(f"  vanilla averaging: {vanilla[0]:.4f}")
    for label, options, with_data in SYMDSL_ROWS:
        started = time.perf_counter()
        p = prepare(models, "hf-gpt2")
        result = match(p, 1, "weight", data=dataset if with_data else None, **options)
        aligned = act_state_dict(p.resolved, p.states[1], result.elements)
        seconds = time.perf_counter() - started
        loss, acc = curve(p.models[0], p.states[0], aligned)
        rows[label] = {"loss": loss, "accuracy": acc, "seconds": seconds, "sweeps": result.info["sweeps"]}
        say(f"  {label}: barrier {loss:.4f} ({seconds:.2f} s, {result.info['sweeps']} sweeps)")
    # the reference: conversion + matching, timed together, in the models' own dtype (float32)
    started = time.perf_counter()
    weights = frequency_weights(dataset).float()
    ref_a, ref_b = (to_rms(m, torch.float64) for m in models)
    ref_a, ref_b = ({k: v.float() for k, v in s.items()} for s in (ref_a, ref_b))
    elements, history = reference_match(ref_a, ref_b, models[0].config.n_head, weights)
    aligned = apply(ref_b, elements, models[0].config.n_head)
    seconds = time.perf_counter() - started
    model = RMSGPT(ref_a, models[0].config.n_head, models[0].config.layer_norm_epsilon)
    loss, acc = curve(model, ref_a, aligned)
    rows["reference (paper's algorithm, RMSNorm + circuits)"] = {
        "loss": loss, "accuracy": acc, "seconds": seconds, "iterations": len(history),
        "weighted_distance": history}
    say(f"  reference: barrier {loss:.4f} ({seconds:.2f} s, {len(history)} iterations)")
    return rows


def markdown(record: dict) -> str:
    m = record["machine"]
    lines = [f"`python benchmarks/wm_reference.py --results`: one BPE GPT-2 pair ({record['pair']}), test-loss "
             "barrier (paper definition, 11 points) on the test split of the same dataset for every row; "
             "align time = canonicalize + match (symdsl) or convert + match (reference), same process, one thread.",
             "", "| method | loss barrier | accuracy barrier (pts) | align time |", "|---|---|---|---|"]
    for label, row in record["rows"].items():
        lines.append(f"| {label} | {row['loss']:.4f} | {100 * row['accuracy']:.2f} | {row['seconds']:.2f} s |")
    lines += ["", f"Endpoint test losses: {record['endpoints']}. Machine: {m['cpu']}, {m['cores']} cores, torch "
              f"{m['torch']}, load average at the start {m['load']}, at the end {m['load_end']}; "
              f"{m['seconds']:.0f} s in all.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bpe_pair
    from bench_common import machine_info, replace_section

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--max-batches", type=int, default=None, help="evaluate on the first N test batches only")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "wm_reference.json"))
    parser.add_argument("--results", action="store_true", help="rewrite the section of benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    load = [round(x, 2) for x in os.getloadavg()]
    started = time.perf_counter()
    dataset = bpe_pair.load_data()
    seeds = [int(s) for s in args.seeds.split(",")]
    models = [bpe_pair.trained(dataset, s) for s in seeds]
    endpoints = [json.loads((bpe_pair.folder(dataset, s) / "symdsl.json").read_text()).get("record", {})
                 for s in seeds]
    print(f"BPE GPT-2 pair, seeds {seeds}, on {dataset.name} ({dataset.vocab_size} ids, "
          f"{int((torch.bincount(dataset.train.stream) > 0).sum())} in the train split)", flush=True)
    rows = run(models, dataset, say=lambda line: print(line, flush=True), max_batches=args.max_batches)
    machine = machine_info(time.perf_counter() - started, load)
    machine["load_end"] = [round(x, 2) for x in os.getloadavg()]
    losses = [e.get("test_loss") for e in endpoints]
    record = {"pair": f"2 x 128, 4 heads, seeds {seeds[0]} and {seeds[1]}, {bpe_pair.recipe(dataset)['steps']} steps",
              "endpoints": ", ".join(f"{x:.4f}" for x in losses if x is not None) or "see the cache",
              "rows": rows, "machine": machine}
    print(f"\n{'method':<58} {'barrier':>8} {'time':>9}")
    for label, row in rows.items():
        print(f"{label:<58} {row['loss']:>8.4f} {row['seconds']:>8.2f}s")
    Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.json}")
    if args.results:
        results = ROOT / "benchmarks" / "RESULTS.md"
        if HEADING not in results.read_text():      # first run: the section is appended
            results.write_text(results.read_text().rstrip("\n") + f"\n\n{HEADING}\n")
        replace_section(results, HEADING, markdown(record))
        print("updated benchmarks/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
