"""Data parallelism under torchrun: the sharding/reduction helpers, autocast, and learned matching plus
barrier evaluation on two CPU processes (gloo) against one process."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from symdsl import distributed
from symdsl.data import load_dataset
from symdsl.errors import UsageError
from symdsl.evaluate.forward import autocast

LEARNED = ["--matcher", "learned", "--option", "steps=30", "--option", "eval_every=10", "--points", "5",
           "--max-batches", "2", "--seed", "3"]


# ----------------------------------------------------------------------------- helpers, one process


def test_one_process_is_rank_zero_of_one_and_reductions_are_identities():
    assert (distributed.rank(), distributed.world_size(), distributed.is_main(), distributed.active()) == \
        (0, 1, True, False)
    assert distributed.reduce_sums([1.5, 3]) == [1.5, 3.0]
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    p.grad = torch.tensor([0.25, -1.0])
    distributed.all_reduce_gradients([p])
    assert torch.equal(p.grad, torch.tensor([0.25, -1.0]))
    tensors = {"a": torch.arange(3), "b": torch.eye(2)}
    out = distributed.broadcast_tensors(tensors)
    assert out.keys() == tensors.keys() and all(torch.equal(out[k], tensors[k]) for k in tensors)
    x = torch.arange(7)
    assert torch.equal(distributed.shard(x), x)


@pytest.mark.parametrize("n", [0, 1, 2, 5, 64, 65])
@pytest.mark.parametrize("world", [2, 3])
def test_shards_partition_a_batch_in_order(n, world):
    x = torch.arange(n)
    pieces = [distributed.shard(x, rank=r, world=world) for r in range(world)]
    assert torch.equal(torch.cat(pieces), x)
    sizes = [len(p) for p in pieces]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("shape", [(10,), (7, 3)], ids=["classification", "language-model"])
def test_weighted_shard_gradients_sum_to_the_whole_batch_gradient(shape):
    # what the ranks compute, simulated in one process: each shard's mean loss weighted by its share
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Linear(4, 5).double()
    inputs = torch.randn(*shape, 4, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 5, shape, generator=g)

    def loss(x, y):
        return torch.nn.functional.cross_entropy(model(x).reshape(-1, 5), y.reshape(-1))

    whole = torch.autograd.grad(loss(inputs, targets), list(model.parameters()))
    summed = [torch.zeros_like(p) for p in model.parameters()]
    for r in range(3):
        x, y = distributed.shard(inputs, rank=r, world=3), distributed.shard(targets, rank=r, world=3)
        parts = torch.autograd.grad(loss(x, y) * distributed.share(targets, y), list(model.parameters()))
        summed = [s + p for s, p in zip(summed, parts)]
    for s, w in zip(summed, whole):
        torch.testing.assert_close(s, w, rtol=1e-12, atol=1e-14)


def test_the_environment_decides_and_a_half_described_job_is_refused(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.init_from_env("cpu") is False and distributed.local_device("cuda") == "cuda"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(UsageError, match="MASTER_ADDR, MASTER_PORT not set; start the processes with torchrun"):
        distributed.init_from_env("cpu")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.local_device("cuda") == torch.device("cuda", 1)
    assert distributed.local_device("cuda:0") == "cuda:0"
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(UsageError, match="WORLD_SIZE='two' is not a number"):
        distributed.init_from_env("cpu")


def test_autocast_runs_the_path_forward_in_bfloat16_and_the_loss_in_float32():
    from symdsl.learn import PathLoss
    from symdsl.plugins import load
    from symdsl.spec import load_spec_text, resolve

    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    spec = load_spec_text('symdsl: 1\nname: m\nsites: {u: {group: permutation, size: 8}}\n'
                          'tensors: {0.weight: "u _", 0.bias: u, 2.weight: "_ u\'"}\ninvariant: [2.bias]\n')
    r = resolve(spec, model, registries=load())
    x, y = torch.randn(16, 3, generator=g), torch.randint(0, 4, (16,), generator=g)
    full = PathLoss(model, r, [model.state_dict()] * 2, "classification").loss([0.5, 0.5], [None, None], x, y)
    half = PathLoss(model, r, [model.state_dict()] * 2, "classification", autocast="bfloat16")
    low = half.loss([0.5, 0.5], [None, None], x, y)
    assert low.dtype == torch.float32
    assert 0 < abs(float(low) - float(full)) < 0.05     # bfloat16 really ran, and stayed close
    with pytest.raises(UsageError, match="autocast dtype 'int8'"):
        with autocast("cpu", "int8"):
            pass


def test_learned_matching_and_curves_take_the_autocast_option_on_cpu():
    from symdsl.api.pipeline import match, prepare
    from symdsl.evaluate import loss_curve
    from symdsl.experiments.train import small_vit

    digits = load_dataset("digits")
    prepared = prepare([small_vit(digits, embed_dim=16, depth=1, num_heads=2, seed=s) for s in (0, 1)])
    runs = {mode: match(prepared, 1, "learned", data=digits, steps=2, eval_every=1, autocast=mode)
            for mode in (None, "bfloat16")}
    assert runs["bfloat16"].info["autocast"] == "bfloat16" and runs["bfloat16"].info["processes"] == 1
    full, low = runs[None].info["start_validation"], runs["bfloat16"].info["start_validation"]
    assert full != low and abs(full - low) < 0.05
    curves = {mode: loss_curve(prepared.models[0], *prepared.states, digits, points=2, max_batches=1, autocast=mode)
              for mode in (None, "bfloat16")}
    assert curves["bfloat16"].info["autocast"] == "bfloat16" and "autocast" not in curves[None].info
    gap = max(abs(a - b) for a, b in zip(curves[None].loss, curves["bfloat16"].loss))
    assert 0 < gap < 0.05
    with pytest.raises(UsageError, match="autocast"):
        match(prepared, 1, "learned", data=digits, steps=1, autocast="int8")


# ----------------------------------------------------------------------------- torchrun, two processes


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Two digit ViTs trained from different seeds (a loss barrier of about 2 nats between them)."""
    from symdsl.experiments.train import small_vit, train
    from symdsl.models import save_model

    digits = load_dataset("digits")
    root = tmp_path_factory.mktemp("pair")
    folders = []
    for seed in (0, 1):
        model = small_vit(digits, embed_dim=16, depth=1, num_heads=2, seed=seed)
        train(model, digits, steps=300, lr=1e-2, seed=seed, threads=1, evaluate_split=None)
        folders.append(str(save_model(model, root / f"m{seed}")))
    return folders


def _environment():
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                              "MASTER_PORT")}
    return {**env, "OMP_NUM_THREADS": "1"}


def _barrier(pair, out, *, processes, device="cpu", extra=()):
    command = ["-m", "symdsl", "barrier", *pair, "--data", "digits", "--device", device, *LEARNED, *extra,
               "--json", str(out), "-q"]
    if processes > 1:
        command = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes), *command]
    result = subprocess.run([sys.executable, *command], capture_output=True, text=True, env=_environment(),
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout, json.loads(out.read_text())


def _compare(one, two, *, barrier_tol, curve_tol):
    aligned = "learned matching"
    b1, b2 = one["curves"][aligned]["barrier"]["loss"], two["curves"][aligned]["barrier"]["loss"]
    assert abs(b1 - b2) < barrier_tol
    # the learned elements agree: every validation of the run (a function of the elements at that
    # step) and the aligned path's curve are the same, not only the barrier
    h1 = [h["validation"] for h in one["alignment"]["info"]["history"]]
    h2 = [h["validation"] for h in two["alignment"]["info"]["history"]]
    assert len(h1) == len(h2) and max(abs(a - b) for a, b in zip(h1, h2)) < curve_tol
    for label in one["curves"]:
        diff = [abs(a - b) for a, b in zip(one["curves"][label]["loss"], two["curves"][label]["loss"])]
        assert max(diff) < curve_tol, (label, diff)
    return b1, b2


def test_torchrun_two_cpu_processes_give_the_one_process_barrier(pair, tmp_path):
    printed_one, one = _barrier(pair, tmp_path / "one.json", processes=1)
    printed_two, two = _barrier(pair, tmp_path / "two.json", processes=2)
    b1, b2 = _compare(one, two, barrier_tol=0.01, curve_tol=1e-5)   # measured: 1e-7
    assert b1 < one["curves"]["vanilla"]["barrier"]["loss"] - 0.3     # the matching did real work
    assert two["curves"]["learned matching"]["info"]["processes"] == 2
    assert two["alignment"]["info"]["processes"] == 2
    # rank 0 alone printed the table and wrote the file
    assert printed_two.count("learned matching") == 1 and printed_two.count("wrote ") == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bfloat16_learned_matching_and_evaluation_stay_close_to_cpu(pair, tmp_path):
    _, cpu = _barrier(pair, tmp_path / "cpu.json", processes=1)
    _, gpu = _barrier(pair, tmp_path / "gpu.json", processes=1, device="cuda",
                      extra=["--option", "autocast=bfloat16", "--autocast", "bfloat16"])
    assert gpu["alignment"]["info"]["autocast"] == "bfloat16"
    assert gpu["curves"]["vanilla"]["info"]["autocast"] == "bfloat16"
    # bfloat16 keeps about 3 significant digits: the barrier moves by hundredths, not tenths
    _compare(cpu, gpu, barrier_tol=0.1, curve_tol=0.1)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_torchrun_two_gpus_nccl_give_the_one_gpu_barrier(pair, tmp_path):
    _, one = _barrier(pair, tmp_path / "one.json", processes=1, device="cuda")
    _, two = _barrier(pair, tmp_path / "two.json", processes=2, device="cuda")
    _compare(one, two, barrier_tol=0.01, curve_tol=1e-3)
