"""Speed and memory of weight matching on GPT-2-shaped models, from 2 layers x 64 wide to GPT-2 small.

For each size, two ``transformers.GPT2LMHeadModel`` of that shape are built from a config with
different random inits (seeds 0 and 1: nothing to find, the worst case for every solver) and
canonicalized through the pipeline (``symdsl.api.pipeline.prepare``, the ``hf-gpt2`` spec); then
weight matching runs with its default options and a phase timer. Reported per size and pair:

- wall time of weight matching, split into phases: correlation matmuls, assignments
  (scipy), SVDs (Procrustes), invertible least squares (closed forms + L-BFGS on Gram
  matrices), applying transforms, scoring (the exact objective), dtype conversion, other;
- peak memory while matching (CPU: peak RSS of a fresh process per size, with the peak reset
  before matching where the OS allows it; CUDA: ``torch.cuda.max_memory_allocated``);
- the *unavoidable* work timed alone: every correlation matmul of the run replayed on random
  matrices of the same shapes and dtypes, and every solver call replayed on the very matrices
  the run handed to it (recorded in a second, identical run, which also checks determinism);
  ``ratio`` = wall time / unavoidable time, so 1.0 would be no overhead at all;
- a recovery pair for the same size (B = a random symmetry transform of A), which must come
  back to A up to float32 rounding (``rel. distance``);
- CPU seconds per phase (a second table): on a shared machine wall time measures the other jobs,
  CPU time of a one-thread run much less so; every correlation matmul by shape, dtype, count and
  GFLOP (``matmul_shapes`` in the JSON); with ``--cprofile FILE`` a cProfile of the match.

    python benchmarks/speed.py                                  # every size, CPU, torch's thread count
    python benchmarks/speed.py --sizes 2x64,4x256 --threads 2 --json /tmp/speed.json
    python benchmarks/speed.py --sizes 12x768 --device cuda
    python benchmarks/speed.py --sizes 12x768 --pairs random --no-replay --option max_iter=1
    python benchmarks/speed.py --sizes 12x768 --pairs random --no-replay --threads 1 --cprofile wm.prof

Sizes are ``LAYERSxWIDTH`` (heads: WIDTH / 64, at least 2; MLP 4 x WIDTH; vocabulary 50257 and
1024 positions unless ``--vocab`` / ``--positions`` say otherwise). Writes JSON (``--json``,
default ``benchmarks/speed.json``) and prints a table.
"""
from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import platform
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
DEFAULT_SIZES = ["2x64", "4x128", "4x256", "6x384", "12x768"]
PHASES = ["correlate", "assign", "svd", "invertible", "apply", "score", "convert"]


# -- the timer weight matching accepts (``profile=``) ---------------------------------------------
class PhaseTimer:
    """Exclusive wall time per phase; with ``record`` also keeps every solver input for a replay.

    Weight matching calls ``phase(name)`` around each piece of work and ``note(event, ...)``
    with the operands of each correlation matmul and solver call. On CUDA every phase boundary
    synchronises, so that asynchronous kernels are charged to the phase that launched them.
    """

    def __init__(self, device: torch.device, record: bool = False):
        self.cuda = device.type == "cuda"
        self.record = record
        self.seconds: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)      # process CPU seconds per phase (a busy machine's
        self.calls: dict[str, int] = defaultdict(int)
        self.matmuls: dict[tuple, int] = defaultdict(int)   # (shape a, shape b, dtype) -> count
        self.solver_inputs: list[tuple] = []
        self._stack: list[list] = []                          # [name, start, cpu start] of open phases

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def _charge(self, entry: list, now: float, cpu: float) -> None:
        self.seconds[entry[0]] += now - entry[1]
        self.cpu[entry[0]] += cpu - entry[2]

    def phase(self, name: str):
        timer = self

        class _Phase:
            def __enter__(self):
                now, cpu = timer._now(), time.process_time()
                if timer._stack:                       # pause the enclosing phase: times are exclusive
                    timer._charge(timer._stack[-1], now, cpu)
                timer._stack.append([name, now, cpu])

            def __exit__(self, *exc):
                now, cpu = timer._now(), time.process_time()
                inner = timer._stack.pop()
                timer._charge(inner, now, cpu)
                timer.calls[inner[0]] += 1
                if timer._stack:
                    timer._stack[-1][1:] = [now, cpu]
                return False

        return _Phase()

    def note(self, event: str, **data) -> None:
        if event == "matmul":
            self.matmuls[(tuple(data["a"].shape), tuple(data["b"].shape), data["a"].dtype)] += 1
            return
        if self.record:
            self.solver_inputs.append((event, {k: _to_cpu(v) for k, v in data.items()}))


def _to_cpu(value):
    from symdsl.match.solvers import Gram

    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, Gram):
        return value.to("cpu")
    return value


# -- replaying the unavoidable work ---------------------------------------------------------------
def replay_matmuls(matmuls: dict, device: torch.device) -> float:
    """Seconds to run every recorded matmul again (random operands of the same shapes and dtypes)."""
    generator = torch.Generator(device=device).manual_seed(0)
    total = 0.0
    for (shape_a, shape_b, dtype), count in matmuls.items():
        a = torch.randn(shape_a, generator=generator, dtype=dtype, device=device)
        b = torch.randn(shape_b, generator=generator, dtype=dtype, device=device)
        _sync(device)
        start = time.perf_counter()
        for _ in range(count):
            a @ b
        _sync(device)
        total += time.perf_counter() - start
    return total


def replay_solvers(inputs: list, device: torch.device) -> dict[str, float]:
    """Seconds per solver kind to run every recorded solver call again on its recorded input."""
    from symdsl.match.gauss_newton import refine_gauss_newton
    from symdsl.match.refine import refine_lbfgs
    from symdsl.match.solvers import Gram, gram_objective, least_squares_candidates, maximize_trace

    seconds: dict[str, float] = defaultdict(float)
    for event, data in inputs:
        data = {k: (v.to(device) if isinstance(v, (torch.Tensor, Gram)) else v) for k, v in data.items()}
        _sync(device)
        start = time.perf_counter()
        if event == "maximize_trace":
            maximize_trace(data["kind"], data["c"], data["options"])
            label = "assign" if data["kind"].discrete else "svd"
        elif event == "invertible":
            least_squares_candidates(data["primal"], data["dual"])
            label = "invertible"
        elif event == "lbfgs":
            refine_lbfgs(data["start"], gram_objective(data["primal"], data["dual"]), data["kind"],
                         max_iter=data["steps"])
            label = "invertible"
        elif event == "newton":
            refine_gauss_newton(data["start"], data["primal"], data["dual"], max_iter=data["steps"], tol=1e-12,
                                newton_iter=20)
            label = "invertible"
        else:
            continue
        _sync(device)
        seconds[label] += time.perf_counter() - start
    return dict(seconds)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# -- memory ---------------------------------------------------------------------------------------
def _proc_status(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status in bytes (Linux only; None elsewhere)."""
    status = Path("/proc/self/status")
    if not status.exists():
        return None
    for line in status.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux >= 4.0); False where impossible."""
    clear = Path("/proc/self/clear_refs")
    try:
        clear.write_text("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    """Peak resident set size of this process in bytes (VmHWM on Linux, ru_maxrss elsewhere)."""
    hwm = _proc_status("VmHWM")
    if hwm is not None:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024    # macOS reports bytes, Linux kB


# -- models ---------------------------------------------------------------------------------------
def parse_size(text: str) -> tuple[int, int]:
    """``"12x768"`` -> (12, 768)."""
    layers, _, width = text.lower().partition("x")
    if not (layers.isdigit() and width.isdigit()):
        raise SystemExit(f"--sizes: '{text}' is not LAYERSxWIDTH (e.g. 12x768)")
    return int(layers), int(width)


def gpt2_config(layers: int, width: int, vocab: int, positions: int):
    import transformers

    heads = max(2, width // 64)
    if width % heads:
        raise SystemExit(f"--sizes: width {width} is not divisible by {heads} heads")
    return transformers.GPT2Config(n_layer=layers, n_embd=width, n_head=heads, vocab_size=vocab,
                                   n_positions=positions, bos_token_id=0, eos_token_id=0)


def build_pair(config, kind: str, device: torch.device):
    """(resolved spec, state A, state B, parameter count): canonical GPT-2 states for a pair of ``kind``."""
    import transformers

    from symdsl.act import act_state_dict, random_transform
    from symdsl.models.build import quiet_transformers
    from symdsl.api.pipeline import prepare

    models = []
    with quiet_transformers():
        for seed in ((0, 1) if kind == "random" else (0,)):
            torch.manual_seed(seed)
            models.append(transformers.GPT2LMHeadModel(config).eval())
    if kind == "recovery":
        models.append(models[0])
    prepared = prepare(models, "hf-gpt2", device=device)
    params = sum(p.numel() for p in models[0].parameters())
    resolved, (a, b) = prepared.resolved, prepared.states
    del models, prepared
    if kind == "recovery":       # B = a random symmetry transform of A (float32, like A)
        b = act_state_dict(resolved, a, random_transform(resolved, seed=7, device=device))
    gc.collect()
    return resolved, a, b, params


# -- one measurement (in a fresh process, so that its peak memory is its own) --------------------
def measure(job: dict) -> dict:
    from symdsl.plugins import default_registries

    torch.set_num_threads(job["threads"])
    device = torch.device(job["device"])
    layers, width = job["size"]
    config = gpt2_config(layers, width, job["vocab"], job["positions"])
    resolved, a, b, params = build_pair(config, job["pair"], device)
    matcher = default_registries().matchers["weight"]
    label = f"{layers}x{width} {job['pair']}"
    say = _progress(label)

    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    peak_was_reset = reset_peak_rss() if device.type == "cpu" else False
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base_cuda = torch.cuda.memory_allocated(device)
    rss_before = _proc_status("VmRSS")
    timer = PhaseTimer(device)
    profiler = None
    if job.get("cprofile"):
        import cProfile

        profiler = cProfile.Profile()
    cpu_start, start = time.process_time(), time.perf_counter()
    if profiler is not None:
        profiler.enable()
    result = matcher.match(resolved, a, b, profile=timer, progress=say, device=device, **job["options"])
    _sync(device)
    if profiler is not None:
        profiler.disable()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    if profiler is not None:
        profiler.dump_stats(job["cprofile"])
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else None
    memory = {"peak_rss_bytes": peak_rss(), "rss_before_bytes": rss_before, "peak_reset_before_matching": peak_was_reset}
    if device.type == "cuda":
        memory.update(peak_cuda_bytes=torch.cuda.max_memory_allocated(device), cuda_before_bytes=base_cuda)
    phases = {p: timer.seconds.get(p, 0.0) for p in PHASES}
    phases["other"] = max(wall - sum(phases.values()), 0.0)
    phases_cpu = {p: timer.cpu.get(p, 0.0) for p in PHASES}
    phases_cpu["other"] = max(cpu - sum(phases_cpu.values()), 0.0)
    # every correlation matmul by shape: (a shape, b shape, dtype, count, GFLOP in all), largest first
    matmul_shapes = sorted(([list(sa), list(sb), str(dt).removeprefix("torch."), n,
                             n * 2 * _numel(sa) * sb[-1] / 1e9] for (sa, sb, dt), n in timer.matmuls.items()),
                           key=lambda row: -row[-1])
    out = {"size": f"{layers}x{width}", "layers": layers, "width": width, "heads": config.n_head,
           "vocab": config.vocab_size, "parameters": params, "pair": job["pair"], "device": str(device),
           "threads": torch.get_num_threads(), "wall_s": wall, "cpu_s": cpu, "phases_s": phases,
           "phases_cpu_s": phases_cpu, "matmul_shapes": matmul_shapes,
           "phase_calls": dict(timer.calls), "objective": result.objective, "sweeps": result.info["sweeps"],
           "relative_distance": result.info["relative_distance"], "memory": memory,
           "load_average_before": load_before, "load_average_after": load_after,
           "options": job["options"], "matmuls": sum(timer.matmuls.values())}
    if job["replay"]:
        say("weight matching (recording solver inputs)", 0, 1)
        recorder = PhaseTimer(device, record=True)
        again = matcher.match(resolved, a, b, profile=recorder, device=device, **job["options"])
        out["deterministic"] = again.objective == result.objective and all(
            torch.equal(again.elements[s], result.elements[s]) for s in result.elements)
        del again
        say("replaying the unavoidable work", 0, 1)
        matmul_s = replay_matmuls(recorder.matmuls, device)
        solver_s = replay_solvers(recorder.solver_inputs, device)
        unavoidable = matmul_s + sum(solver_s.values())
        out["unavoidable_s"] = {"matmuls": matmul_s, **solver_s, "total": unavoidable}
        out["ratio"] = wall / unavoidable if unavoidable > 0 else None
    say(None, 0, 0)
    return out


def _numel(shape) -> int:
    out = 1
    for n in shape:
        out *= n
    return out


def _progress(label: str):
    state = {"last": 0.0}

    def say(phase, done, total):
        now = time.perf_counter()
        if phase is None:
            sys.stderr.write("\r" + " " * 100 + "\r")
        elif now - state["last"] > 1.0 or done == total:
            state["last"] = now
            sys.stderr.write(f"\r  {label}: {phase} {done}/{total}" + " " * 10)
        sys.stderr.flush()

    return say


def _worker(job: dict, connection) -> None:
    try:
        connection.send(("ok", measure(job)))
    except BaseException as error:     # report, do not hang the parent
        import traceback

        connection.send(("error", f"{error!r}\n{traceback.format_exc()}"))
    finally:
        connection.close()


def run_job(job: dict) -> dict:
    """``measure(job)`` in a fresh spawned process (clean peak memory), its result returned."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe(duplex=False)
    process = context.Process(target=_worker, args=(job, child))
    process.start()
    child.close()
    status, payload = parent.recv()
    process.join()
    if status != "ok":
        raise SystemExit(f"benchmark of {job['size']} {job['pair']} failed:\n{payload}")
    return payload


# -- reporting ------------------------------------------------------------------------------------
def machine_info(device: torch.device, threads: int) -> dict:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {"cpu": cpu, "logical_cores": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "torch_threads": threads, "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "device": str(device)}
    try:
        import scipy
        import transformers

        info.update(scipy=scipy.__version__, transformers=transformers.__version__)
    except ImportError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def table(rows: list[dict]) -> str:
    head = ["size", "params", "pair", "wall s", "CPU s", "sweeps", "corr", "assign", "svd", "inv", "apply", "score", "other",
            "unavoid.", "ratio", "base MB", "peak MB", "rel. dist"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        p = r["phases_s"]
        peak = r["memory"].get("peak_cuda_bytes", r["memory"]["peak_rss_bytes"])
        unavoidable = r.get("unavoidable_s", {}).get("total")
        before = r["memory"].get("cuda_before_bytes", r["memory"]["rss_before_bytes"])
        base = "-" if before is None else f"{before / 2**20:.0f}"
        cells = ([
            r["size"], f"{r['parameters'] / 1e6:.1f}M", r["pair"], f"{r['wall_s']:.1f}", f"{r['cpu_s']:.1f}",
            str(r["sweeps"]),
            f"{p['correlate']:.1f}", f"{p['assign']:.1f}", f"{p['svd']:.1f}", f"{p['invertible']:.1f}",
            f"{p['apply']:.1f}", f"{p['score'] + p['convert']:.1f}", f"{p['other']:.1f}",
            "-" if unavoidable is None else f"{unavoidable:.1f}",
            "-" if r.get("ratio") is None else f"{r['ratio']:.2f}",
            base, f"{peak / 2**20:.0f}", f"{r['relative_distance']:.3g}"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cpu_table(rows: list[dict]) -> str:
    """CPU seconds per phase (what a busy machine does not inflate), with the load averages around the run."""
    head = ["size", "pair", "wall s", "CPU s", "sweeps", "corr", "assign", "svd", "inv", "apply", "score", "convert",
            "other", "final objective", "load before/after"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        p = r["phases_cpu_s"]
        load = "/".join(f"{x[0]:.1f}" if x else "-" for x in (r["load_average_before"], r["load_average_after"]))
        cells = [r["size"], r["pair"], f"{r['wall_s']:.1f}", f"{r['cpu_s']:.1f}", str(r["sweeps"]),
                 *(f"{p[k]:.1f}" for k in ["correlate", "assign", "svd", "invertible", "apply", "score", "convert",
                                            "other"]),
                 f"{r['objective'][-1]:.9f}", load]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(DEFAULT_SIZES), help="comma-separated LAYERSxWIDTH list")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch intra-op threads (default: torch's, here %(default)s)")
    parser.add_argument("--pairs", default="random,recovery", help="random, recovery or both (comma-separated)")
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--positions", type=int, default=1024)
    parser.add_argument("--replay", action=argparse.BooleanOptionalAction, default=True,
                        help="time the unavoidable work alone (a second, recording run and a replay)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="weight matching option, e.g. --option max_iter=1 (repeatable)")
    parser.add_argument("--cprofile", default=None, metavar="FILE",
                        help="also run cProfile around weight matching and write its stats to FILE (one size, one pair)")
    parser.add_argument("--json", default=str(HERE / "speed.json"), help="output file (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    import yaml

    options = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--option takes KEY=VALUE, got '{item}'")
        options[key] = yaml.safe_load(value)
    pairs = [p for p in args.pairs.split(",") if p]
    if not set(pairs) <= {"random", "recovery"}:
        raise SystemExit(f"--pairs: choose from random, recovery; got {args.pairs}")
    device = torch.device(args.device)
    machine = machine_info(device, args.threads)
    print(f"machine: {machine['cpu']}, {machine['usable_cores']} usable cores, torch {machine['torch']} "
          f"with {args.threads} threads, device {device}", flush=True)
    rows = []
    for size in args.sizes.split(","):
        for pair in pairs:
            job = {"size": parse_size(size), "pair": pair, "device": args.device, "threads": args.threads,
                   "vocab": args.vocab, "positions": args.positions, "replay": args.replay, "options": options,
                   "cprofile": args.cprofile}
            row = run_job(job)
            rows.append(row)
            load = row["load_average_before"]
            ratio = f", ratio {row['ratio']:.2f}" if row.get("ratio") else ""
            print(f"{row['size']} {pair}: {row['wall_s']:.1f} s, {row['sweeps']} sweeps{ratio}"
                  + (f", load average {load[0]:.2f}" if load else ""), flush=True)
    print(table(rows))
    print("CPU seconds per phase:")
    print(cpu_table(rows))
    Path(args.json).write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
