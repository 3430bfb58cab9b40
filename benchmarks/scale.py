"""Time and peak memory of ``symdsl align`` on Llama-shaped bfloat16 sharded checkpoints.

Usage (from the repository root, after ``pip install -e ".[all]"``)::

    python benchmarks/scale.py                        # 125M only (the default)
    python benchmarks/scale.py --sizes 125M 350M 1B   # bigger pairs: needs their memory (docs/scale.md)
    python benchmarks/scale.py --sizes 8B-4L          # the 8B shape with 4 of its 32 layers
    python benchmarks/scale.py --sizes 20M --no-cache # a smoke run (seconds)

For each size two independently initialised ``LlamaForCausalLM`` (``hf-llama`` spec; seeds 0
and 1) are written in bfloat16 with ``save_pretrained(max_shard_size="2GB")`` and cached under
``$SYMDSL_CACHE/scale/`` (default ``~/.cache/symdsl/scale``). Then ``symdsl align A B -o OUT``
runs in a subprocess (``--no-verify``: the spec's float64 check is a once-per-architecture
cost with its own memory, see docs/scale.md; ``--option max_iter=N``); its peak resident set
size comes from the kernel (``wait4``'s ``ru_maxrss``: the true high-water mark, nothing missed
between samples), its RSS over time is sampled from ``/proc/PID/status`` every 0.2 s. Prints a
table (parameters, both inputs' size on disk, seconds, peak RSS, peak / disk) and writes JSON
(``--json``, default ``benchmarks/scale.json``), with the memory model fitted on the measured
points: ``peak = a * disk + b`` (least squares, disk = both inputs), kept for comparison. A
truncated pair (``8B-4L`` -> 32 layers) is extrapolated by parts, from above:
``peak(L) = peak(4) + (L - 4) * one model's bytes of one layer`` (see :func:`extrapolate`).
``--rows-from JSON`` re-prints and re-extrapolates an earlier run's rows without measuring.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Llama-shaped configurations (vocabulary 32000 up to 350M, Llama 3's 128256 above)
SIZES = {
    "20M": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
                num_key_value_heads=4, vocab_size=32000),
    "125M": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                 num_key_value_heads=4, vocab_size=32000),
    "350M": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=24, num_attention_heads=16,
                 num_key_value_heads=4, vocab_size=32000),
    "1B": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),   # Llama 3.2 1B's shape
    "8B-4L": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=4, num_attention_heads=32,
                  num_key_value_heads=8, vocab_size=128256),                           # Llama 3 8B, 4 of 32 layers
}
FULL_LAYERS = {"8B-4L": 32}
SHARD = "2GB"


def cache_dir() -> Path:
    root = Path(os.environ.get("SYMDSL_CACHE", Path.home() / ".cache" / "symdsl"))
    return root / "scale"


def config_of(size: str) -> dict:
    return {**SIZES[size], "max_position_embeddings": 2048, "bos_token_id": 0, "eos_token_id": 0,
            "pad_token_id": 0, "tie_word_embeddings": SIZES[size].get("tie_word_embeddings", False)}


def write_model(size: str, seed: int, folder: Path) -> Path:
    """A randomly initialised Llama of ``size`` written in bfloat16 as 2 GB shards (cached)."""
    if (folder / "config.json").is_file():
        return folder
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(**config_of(size))
    model = transformers.LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)   # built in bfloat16
    with torch.no_grad():             # norms get non-unit gains, so folding them is exercised
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5)
    partial = folder.with_name(folder.name + ".partial")
    model.save_pretrained(partial, max_shard_size=SHARD)
    partial.rename(folder)
    return folder


def pair(size: str, cache: bool = True) -> tuple[Path, Path]:
    """Two independently initialised checkpoints of ``size`` (seeds 0 and 1)."""
    base = cache_dir() if cache else Path(tempfile.mkdtemp(prefix="symdsl-scale-"))
    # written in a subprocess: the writer's memory never counts in this process
    folders = []
    for seed in (0, 1):
        folder = base / f"llama-{size}-seed{seed}"
        if not (folder / "config.json").is_file():
            folder.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([sys.executable, __file__, "--write", size, str(seed), str(folder)], check=True)
        folders.append(folder)
    return folders[0], folders[1]


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def run_measured(command: list[str]) -> dict:
    """Run ``command``; its wall time, peak RSS (``ru_maxrss`` from wait4) and sampled RSS (MB, every 0.2 s)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    samples: list[tuple[float, float]] = []

    def sample():
        status = Path(f"/proc/{process.pid}/status")
        while process.poll() is None:
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        samples.append((time.perf_counter() - started, int(line.split()[1]) / 1024))
            except OSError:
                break
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    sampler.join()
    return {"seconds": time.perf_counter() - started, "peak_rss": usage.ru_maxrss * 1024, "rc": process.returncode,
            "output": output[-2000:], "rss_mb": samples[::5]}


def measure(size: str, max_iter: int, cache: bool) -> dict:
    a, b = pair(size, cache)
    # beside the pair, on disk: align spills canonical tensors into OUT's parent (never a tmpfs /tmp)
    out = Path(tempfile.mkdtemp(prefix="symdsl-scale-out-", dir=a.parent)) / "aligned"
    command = [sys.executable, "-m", "symdsl", "align", str(a), str(b), "-o", str(out), "--no-verify",
               "--option", f"max_iter={max_iter}"]
    load_before = os.getloadavg()[0]
    result = run_measured(command)
    result["load"] = [load_before, os.getloadavg()[0]]   # 1-minute load average before and after (shared cores)
    if result["rc"] != 0:
        print(result["output"], file=sys.stderr)
        raise SystemExit(f"{size}: symdsl align failed (exit {result['rc']})")
    import shutil

    shutil.rmtree(out.parent, ignore_errors=True)
    config = config_of(size)
    disk = disk_bytes(a) + disk_bytes(b)
    return {"size": size, "params": disk_bytes(a) // 2, "layers": config["num_hidden_layers"], "disk": disk,
            "layer_bytes": 2 * 2 * _layer_params(config), "max_iter": max_iter, **result,
            "ratio": result["peak_rss"] / disk}


def _layer_params(config: dict) -> int:
    d, f = config["hidden_size"], config["intermediate_size"]
    k = d // config["num_attention_heads"]
    return 2 * d * d + 2 * d * k * config["num_key_value_heads"] + 3 * d * f + 2 * d


def fit(rows: list[dict]) -> dict:
    """``peak = a * disk + b`` by least squares over the measured rows (a needs two sizes)."""
    if len(rows) < 2:
        row = rows[0]
        return {"a": row["peak_rss"] / row["disk"], "b": 0.0, "points": 1}
    n = len(rows)
    mx = sum(r["disk"] for r in rows) / n
    my = sum(r["peak_rss"] for r in rows) / n
    sxx = sum((r["disk"] - mx) ** 2 for r in rows)
    a = sum((r["disk"] - mx) * (r["peak_rss"] - my) for r in rows) / sxx
    return {"a": a, "b": my - a * mx, "points": n,
            "residuals": {r["size"]: r["peak_rss"] - (a * r["disk"] + my - a * mx) for r in rows}}


def extrapolate(row: dict, model: dict) -> dict | None:
    """A truncated pair's peak at its full depth, bounded from above by parts: each missing layer adds
    at most one model's bytes of that layer (``layer_bytes / 2``).

    Why (docs/scale.md, "Memory model, by parts"): of the phases of ``symdsl align``, preparing
    holds one model's written tensors (less than the model), weight matching one layer's unit
    (the residual rotation streams tensor by tensor), and the end B whole, moved in place; so the
    peak grows with depth by at most one model's layer bytes per layer, whichever phase holds it.
    ``model`` (the fit over whole pairs) is kept in the JSON for comparison, not used here.
    """
    full = FULL_LAYERS.get(row["size"])
    if full is None:
        return None
    extra = (full - row["layers"]) * row["layer_bytes"]
    return {"layers": full, "disk": row["disk"] + extra, "peak_rss": row["peak_rss"] + extra / 2,
            "rule": "measured peak + one model's bytes per missing layer (an upper bound by parts)"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["125M"], choices=list(SIZES))
    parser.add_argument("--max-iter", type=int, default=2, help="weight matching sweeps (default 2)")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "scale.json"))
    parser.add_argument("--no-cache", action="store_true", help="write the pairs into a temporary folder")
    parser.add_argument("--write", nargs=3, metavar=("SIZE", "SEED", "FOLDER"), help=argparse.SUPPRESS)
    parser.add_argument("--rows-from", metavar="JSON", help="measure nothing: print and extrapolate the rows of an "
                        "earlier run's JSON (e.g. after the extrapolation changed)")
    args = parser.parse_args(argv)
    if args.write:
        write_model(args.write[0], int(args.write[1]), Path(args.write[2]))
        return 0
    earlier = json.loads(Path(args.rows_from).read_text())["rows"] if args.rows_from else None
    rows = []
    print(f"{'size':>6} {'params':>8} {'disk GB':>8} {'seconds':>8} {'peak GB':>8} {'peak/disk':>9} {'load':>9}")
    for size in [r["size"] for r in earlier] if earlier else args.sizes:
        row = next(r for r in earlier if r["size"] == size) if earlier else measure(size, args.max_iter, not args.no_cache)
        rows.append(row)
        print(f"{size:>6} {row['params'] / 1e6:7.0f}M {row['disk'] / 1e9:8.2f} {row['seconds']:8.1f} "
              f"{row['peak_rss'] / 1e9:8.2f} {row['ratio']:9.2f} {row['load'][0]:4.1f}-{row['load'][1]:<4.1f}", flush=True)
    model = fit([r for r in rows if r["size"] not in FULL_LAYERS] or rows)
    print(f"memory model: peak = {model['a']:.2f} * disk + {model['b'] / 1e9:.2f} GB ({model['points']} point(s))")
    extrapolated = {r["size"]: extrapolate(r, model) for r in rows if r["size"] in FULL_LAYERS}
    for size, value in extrapolated.items():
        print(f"{size} at {value['layers']} layers: disk {value['disk'] / 1e9:.1f} GB, "
              f"peak about {value['peak_rss'] / 1e9:.1f} GB")
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "memory_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9,
               "python": platform.python_version()}
    Path(args.json).write_text(json.dumps({"machine": machine, "rows": rows, "model": model,
                                           "extrapolated": extrapolated}, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
