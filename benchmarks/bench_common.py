"""What the pair benchmarks (``table1.py``, ``llama_pairs.py``, ``encoder_pairs.py``) share.

- where trained models are cached and which machine measured them;
- one method row: B's aligned state for a matcher, with weight matching's result reused as
  learned matching's start (the learned row's time then includes the weight-matching time);
- the mean ± std summary over pairs;
- writing the JSON and replacing a section of ``benchmarks/RESULTS.md``.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TEXT = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"


def cache_root() -> Path:
    root = os.environ.get("SYMDSL_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"),
                                                          "symdsl")
    return Path(root) / "bench"


def machine_info(seconds: float, load) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "load": load, "seconds": seconds}


def replace_section(path: Path, heading: str, body: str) -> None:
    """Replace the text under ``heading`` (up to the next '## ' heading) in a Markdown file."""
    text = path.read_text()
    start = text.index(heading) + len(heading)
    end = text.find("\n## ", start)
    end = len(text) if end < 0 else end + 1
    path.write_text(text[:start] + "\n\n" + body.rstrip() + "\n\n" + text[end:].lstrip("\n") if end < len(text)
                    else text[:start] + "\n\n" + body.rstrip() + "\n")


def aligned_state(p, matcher: str | None, options: dict, dataset, learn_steps: int, starts: dict, key,
                  learned: dict | None = None, remember: bool = True) -> tuple[dict, float]:
    """B's state dict for one method row of prepared pair ``p``, and the seconds it took.

    ``matcher`` None is vanilla averaging (B as it is). A weight-matching result is kept in
    ``starts[key]`` (when ``remember``) and a later learned row with the same ``key`` starts from it;
    its seconds then include the weight matching's. ``learned``: extra learned-matching options.
    """
    from symdsl.act import act_state_dict
    from symdsl.api.pipeline import match

    started = time.perf_counter()
    if matcher is None:
        return p.states[1], time.perf_counter() - started
    extra: dict = {}
    if matcher == "learned":
        found, found_seconds = starts[key]
        extra = {"start": found.elements, "steps": learn_steps, **(learned or {})}
        started -= found_seconds
    result = match(p, 1, matcher, data=dataset, **options, **extra)
    if matcher == "weight" and remember:
        starts[key] = (result, time.perf_counter() - started)
    state_b = act_state_dict(p.resolved, p.states[1], result.elements)
    return state_b, time.perf_counter() - started


def summarise(per_pair: list[dict[str, dict]]) -> dict[str, dict]:
    """Mean ± std over pairs of every row (in the first pair's row order): losses, accuracies, seconds."""
    rows = {}
    for label in per_pair[0]:
        losses = [pair[label]["loss"] for pair in per_pair]
        accuracies = [pair[label]["accuracy"] for pair in per_pair]
        rows[label] = {"loss": losses, "loss_mean": statistics.fmean(losses),
                       "loss_std": statistics.stdev(losses) if len(losses) > 1 else 0.0,
                       "accuracy": accuracies, "accuracy_mean": statistics.fmean(accuracies),
                       "seconds_mean": statistics.fmean(pair[label]["seconds"] for pair in per_pair)}
    return rows


def write_outputs(payload: dict, json_path: str | Path, say: Callable[[str], None],
                  section: tuple[str, str] | None = None) -> None:
    """Write ``payload`` as JSON; with ``section`` = (heading, Markdown), replace that section of RESULTS.md."""
    Path(json_path).write_text(json.dumps(payload, indent=2) + "\n")
    say(f"wrote {json_path}")
    if section is not None:
        replace_section(RESULTS, *section)
        say("updated benchmarks/RESULTS.md")
