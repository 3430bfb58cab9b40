"""Thread policy of weight matching: explicit count > command's --threads > OMP_NUM_THREADS > size.

Small problems run on one thread (on a shared CPU, workers without a free core make every small
parallel op wait); large ones on the cores not already busy. The count is restored afterwards.
"""
from __future__ import annotations

import os

import pytest
import torch

import symdsl.threads as threads
from conftest import REGISTRIES, canonical_example, relative_distance
from symdsl.act import act_state_dict, random_transform
from symdsl.cli.main import build_parser
from symdsl.errors import UsageError


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    threads.set_command_threads(None)
    yield
    threads.set_command_threads(None)


def test_order_explicit_then_command_then_environment_then_size(monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda: 8)
    monkeypatch.setattr(threads, "busy_cores", lambda: 0.0)
    big = threads.SMALL_WORK * 4
    assert threads.choose_threads(None, work=1000) == 1            # small: one thread
    assert threads.choose_threads(None, work=big) == 8             # large, idle: every core
    monkeypatch.setattr(threads, "busy_cores", lambda: 6.2)
    assert threads.choose_threads(None, work=big) == 2             # large, 6 cores busy: the 2 free ones
    monkeypatch.setattr(threads, "busy_cores", lambda: 20.0)
    assert threads.choose_threads(None, work=big) == 1             # overloaded: one, never zero
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.choose_threads(None, work=1000) == 3            # the user's environment wins over size
    threads.set_command_threads(5)
    assert threads.choose_threads(None, work=1000) == 5            # --threads wins over the environment
    assert threads.choose_threads(2, work=1000) == 2               # the matcher option wins over all


def test_busy_cores_come_from_cpu_time_now_not_the_lagging_load_average(monkeypatch):
    """Two /proc/stat readings 0.1 s apart: 3 of 4 CPUs' ticks busy -> 3 busy cores, whatever the load average."""
    readings = iter(["cpu  1000 0 0 1000 0 0 0 0 0 0\n", "cpu  1030 0 0 1010 0 0 0 0 0 0\n"])   # +30 busy, +40 total
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: __import__("io").StringIO(next(readings))
                        if path == "/proc/stat" else real_open(path, *a, **k))
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    monkeypatch.setattr(threads.time, "sleep", lambda seconds: None)
    assert threads.busy_cores() == pytest.approx(3.0)


def test_without_proc_stat_the_load_average_is_used(monkeypatch):
    real_open = open

    def no_stat(path, *a, **k):
        if path == "/proc/stat":
            raise FileNotFoundError(path)
        return real_open(path, *a, **k)
    monkeypatch.setattr("builtins.open", no_stat)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.5, 0.0, 0.0))
    assert threads.busy_cores() == 1.5


@pytest.mark.parametrize("value", ["zero", "0", "-2"])
def test_bad_omp_num_threads_is_a_clear_error(monkeypatch, value):
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    with pytest.raises(UsageError, match="OMP_NUM_THREADS"):
        threads.choose_threads(None, work=10)


def test_bad_counts_are_refused():
    with pytest.raises(UsageError, match="--threads"):
        threads.set_command_threads(0)
    with pytest.raises(UsageError, match="threads"):
        threads.choose_threads(-1, work=10)


def test_weight_matching_uses_one_thread_on_a_small_model_and_restores_the_count():
    _, model, resolved = canonical_example("hf-gpt2")
    a = model.state_dict()
    b = act_state_dict(resolved, a, random_transform(resolved, seed=3))
    before = torch.get_num_threads()
    matcher = REGISTRIES.matchers.lookup("weight")
    result = matcher.match(resolved, a, b)
    assert result.info["threads"] == 1
    assert torch.get_num_threads() == before
    assert relative_distance(resolved, act_state_dict(resolved, b, result.elements), a) < 1e-6
    two = matcher.match(resolved, a, b, threads=2, max_iter=0)
    assert two.info["threads"] == 2 and torch.get_num_threads() == before


def test_weight_option_threads_is_checked():
    _, model, resolved = canonical_example("hf-gpt2")
    state = model.state_dict()
    with pytest.raises(UsageError, match="threads"):
        REGISTRIES.matchers.lookup("weight").match(resolved, state, state, threads=0)


@pytest.mark.parametrize("command", ["align", "merge", "barrier"])
def test_cli_commands_take_threads(command):
    positional = {"align": ["A", "B", "-o", "OUT"], "merge": ["A", "B", "-o", "OUT"],
                  "barrier": ["A", "B", "--data", "digits"]}[command]
    args = build_parser().parse_args([command, *positional, "--threads", "1"])
    assert args.threads == 1
