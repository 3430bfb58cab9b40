"""Progress on stderr: log lines when stderr is not a terminal (timing rules, phases, metrics), true
totals from weight matching, and a learned align whose summary reports the transform it kept."""
from __future__ import annotations

import json
import logging
import re

import pytest

from symdsl.cli.logs import configure
from symdsl.cli.main import main
from symdsl.cli.progress import ProgressReporter
from symdsl.match.base import report


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def _reporter(clock):
    logger = logging.getLogger("symdsl.test-progress")
    logger.handlers, logger.propagate = [], False
    logger.setLevel(logging.INFO)
    lines = Lines()
    logger.addHandler(lines)
    return ProgressReporter("align (learned)", bars=False, lines=True, clock=clock, logger=logger,
                            heartbeat=False), lines.lines


def test_log_lines_come_at_most_every_10_s_at_least_every_30_s_and_at_each_phase_end():
    clock = Clock()
    progress, lines = _reporter(clock)
    for step in range(0, 101):          # a step every 0.5 s for 50 s: a line at 10, 20, 30, 40, 50 s
        clock.now = step * 0.5
        progress("learned matching", step, 200, loss=3.0 - step / 100)
    assert len(lines) == 5
    assert lines[0].startswith("align (learned) | learned matching: 20/200 [00:10<") and "loss 2.8" in lines[0]
    progress.tick()                     # just after a line: nothing to add
    assert len(lines) == 5
    clock.now += 29.0                   # one step running long: the heartbeat line by 30 s
    progress.tick()
    assert len(lines) == 6 and "100/200" in lines[-1] and "01:19" in lines[-1]
    progress("learned matching", 120, 120, best_validation=0.02)   # early stop: the true total
    progress("merge", 1, 3)                                          # the next phase ends the last one
    assert "learned matching done: 120/120" in lines[-1] and "best validation 0.02" in lines[-1]
    progress.close()
    assert lines[-1].startswith("align (learned) | merge done: 1/3")


def test_the_background_thread_writes_a_line_for_a_silent_phase():
    clock = Clock()
    progress, lines = _reporter(clock)
    progress.max_interval, progress._heartbeat = 1.5, True    # the thread looks every POLL = 1 s
    progress("weight matching", 1, 10)
    import time
    deadline = time.monotonic() + 5
    clock.now = 2.0
    while not lines and time.monotonic() < deadline:
        time.sleep(0.05)
    progress.close(finished=False)
    assert lines[0].startswith("align (learned) | weight matching: 1/10") and lines[-1].endswith("]")
    assert "weight matching stopped: 1/10" in lines[-1]


def test_metrics_reach_only_callbacks_that_take_them():
    plain, rich = [], []

    def taking(phase, done, total, **metrics):
        rich.append((phase, done, total, metrics))
    taking.takes_metrics = True
    report(lambda *event: plain.append(event), "learned matching", 1, 2, loss=0.5)
    report(taking, "learned matching", 1, 2, loss=0.5)
    report(None, "learned matching", 1, 2, loss=0.5)
    assert plain == [("learned matching", 1, 2)] and rich == [("learned matching", 1, 2, {"loss": 0.5})]


def test_weight_matching_progress_ends_at_its_real_number_of_sweeps():
    from symdsl import find_spec
    from symdsl.api.pipeline import match, prepare
    from symdsl.models import build_example

    spec = find_spec("hf-gpt2")
    prepared = prepare([build_example(spec, seed=0), build_example(spec, seed=1)], spec)
    events = []

    def progress(phase, done, total, **metrics):
        events.append((phase, done, total, metrics))
    progress.takes_metrics = True
    result = match(prepared, 1, "weight", progress=progress, max_iter=30)
    sweeps = result.info["sweeps"] - 1          # history: identity, anchored start, then one per sweep
    phase, done, total, metrics = events[-1]
    assert phase == "weight matching" and done == total and 0 < sweeps < 30
    assert total * 30 == events[0][2] * sweeps                  # the planned total, cut to the sweeps run
    assert metrics["distance"] == pytest.approx(result.info["relative_distance"])
    assert result.info["kept_objective"] == result.objective[-1]


def test_a_learned_align_logs_its_phases_to_a_non_terminal_stderr_and_reports_the_kept_objective(tmp_path, capsys):
    for seed in (0, 1):
        assert main(["train", "vit-digits", "--seed", str(seed), "--steps", "2", "--width", "16", "--layers", "1",
                     "--heads", "2", "-o", str(tmp_path / f"v{seed}")]) == 0
    capsys.readouterr()
    assert main(["align", str(tmp_path / "v0"), str(tmp_path / "v1"), "-o", str(tmp_path / "out"),
                 "--matcher", "learned", "--data", "digits", "--option", "steps=12", "--option", "eval_every=3",
                 "--option", "lr=0.05"]) == 0
    captured = capsys.readouterr()            # capsys' stderr is no terminal: log lines, no bars
    err = captured.err
    assert re.search(r"align \(learned\) \| learned matching: weight-matching start done: (\d+)/\1 ", err)
    assert re.search(r"align \(learned\) \| learned matching done: (\d+)/\1 .*loss [\d.]+, best validation", err)
    assert "\r" not in err
    info = json.loads((tmp_path / "out" / "symdsl.json").read_text())["info"]
    validations = [h["validation"] for h in info["history"]]
    assert info["kept_objective"] == info["best_validation"] == min(validations)
    printed = re.search(r"objective (\S+) at the start -> (\S+) kept \((validation loss barrier[^)]*)\)", captured.out)
    assert printed, captured.out
    assert float(printed.group(1)) == pytest.approx(validations[0], rel=1e-3)
    assert float(printed.group(2)) == pytest.approx(info["kept_objective"], rel=1e-3)


def test_quiet_hides_progress_and_notes_and_verbose_adds_debug(tmp_path, capsys):
    assert main(["-q", "train", "vit-digits", "--steps", "1", "--width", "16", "--layers", "1", "--heads", "2",
                 "-o", str(tmp_path / "q")]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "trained vit-digits" in captured.out     # results stay on stdout
    assert main(["train", "vit-digits", "--steps", "1", "--width", "16", "--layers", "1", "--heads", "2",
                 "-o", str(tmp_path / "d"), "--verbose"]) == 0
    err = capsys.readouterr().err
    assert "debug: symdsl " in err and "training done: 1/1" in err
    with pytest.raises(SystemExit):
        main(["specs", "-q", "-v"])
    assert "not allowed with argument" in capsys.readouterr().err
    configure("normal")
