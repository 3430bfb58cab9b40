"""Weight matching on a busy CPU: the thread policy against torch's default thread count.

Times ``symdsl.align`` (weight matching) of two random tiny GPT-2s (the bundled demo's size:
2 layers x 64 wide, 4 heads, a 96-token vocabulary, 64 positions) in four settings:

- policy vs default: the matcher's own thread choice (``symdsl.threads.choose_threads``: one
  thread for a problem this small) against torch's default (one thread per usable core);
- idle vs busy: as the machine is, and with one ``python -c "while True: pass"`` process per
  usable core started beside it (killed afterwards, by process id).

Each setting is timed ``--repeat`` times (default 3) after a warm-up, and the minimum is kept;
the 1-minute load average is recorded before each setting. Prints a table, writes JSON
(``--json``, default ``benchmarks/wm_threads.json``).

    python benchmarks/wm_threads.py
    python benchmarks/wm_threads.py --repeat 5 --json /tmp/wm_threads.json

Done when the policy's busy time is at most twice its idle time (``busy / idle`` column).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def tiny_gpt2_pair(vocab: int = 96, positions: int = 64):
    """Two random GPT-2s of the demo's size (seeds 0 and 1), dropout off."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=vocab, n_positions=positions, n_embd=64, n_layer=2, n_head=4,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False,
                        bos_token_id=vocab - 1, eos_token_id=vocab - 1)
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(GPT2LMHeadModel(config).eval())
    return models


def time_align(a, b, threads: int | None, repeat: int) -> tuple[float, int]:
    """(minimum seconds over ``repeat`` aligns, thread count the matcher used)."""
    from symdsl import align

    best, used = float("inf"), 0
    for _ in range(repeat):
        start = time.perf_counter()
        result = align(a, b, "hf-gpt2", "weight", verify=False, threads=threads).result
        best = min(best, time.perf_counter() - start)
        used = result.info["threads"]
    return best, used


class BusyLoops:
    """One spinning Python process per core while the block runs (stopped by their own ids)."""

    def __init__(self, count: int):
        self.count = count
        self.processes: list[subprocess.Popen] = []

    def __enter__(self):
        for _ in range(self.count):
            self.processes.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
        time.sleep(2.0)   # let the scheduler see them before timing
        return self

    def __exit__(self, *exc):
        for process in self.processes:
            process.kill()
        for process in self.processes:
            process.wait()
        return False


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed aligns per setting (minimum kept)")
    parser.add_argument("--json", default=str(HERE / "wm_threads.json"), help="output file (default: %(default)s)")
    args = parser.parse_args(argv)

    from symdsl.threads import usable_cores

    cores = usable_cores()
    default_threads = torch.get_num_threads()   # torch's own default (OMP_NUM_THREADS, else one per core)
    a, b = tiny_gpt2_pair()
    time_align(a, b, None, 1)                   # warm-up: imports, spec resolution caches
    rows = []
    for load in ("idle", "busy"):
        loops = BusyLoops(cores if load == "busy" else 0)
        with loops:
            for policy, threads in (("policy", None), ("torch default", default_threads)):
                before = os.getloadavg()[0]
                seconds, used = time_align(a, b, threads, args.repeat)
                rows.append({"machine": load, "threads": policy, "threads_used": used, "seconds": seconds,
                             "busy_loops": loops.count, "load_before": before})
    idle = {r["threads"]: r["seconds"] for r in rows if r["machine"] == "idle"}
    for row in rows:
        row["vs_idle"] = row["seconds"] / idle[row["threads"]]
    print(f"{'machine':<6} {'threads':<14} {'used':>4} {'seconds':>8} {'busy/idle':>9} {'load before':>11}")
    for r in rows:
        print(f"{r['machine']:<6} {r['threads']:<14} {r['threads_used']:>4} {r['seconds']:>8.2f} {r['vs_idle']:>9.2f} "
              f"{r['load_before']:>11.2f}")
    record = {"rows": rows, "repeat": args.repeat, "usable_cores": cores, "torch_default_threads": default_threads,
              "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "cpu": platform.processor() or platform.machine(),
              "python": platform.python_version(), "torch": torch.__version__}
    Path(args.json).write_text(json.dumps(record, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
