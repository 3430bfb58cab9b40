"""The paper's architecture-changing route: LayerNorm -> RMSNorm, full rotations of the residual."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from symdsl.act import act_state_dict, random_transform
from symdsl.canon import canonicalize
from symdsl.check import numeric_check
from symdsl.cli.main import main
from symdsl.models import build_example
from symdsl.spec import load_spec_text, resolve
from symdsl import find_spec
from conftest import REGISTRIES


@pytest.mark.parametrize("name", ["hf-gpt2-rmsnorm", "timm-vit-rmsnorm"])
def test_full_rotation_holds_after_the_rewrite(name):
    report = numeric_check(find_spec(name), registries=REGISTRIES)
    assert report.ok and report.canonicalize_error < 1e-12
    spec = find_spec(name)
    resolved = resolve(spec, build_example(spec), registries=REGISTRIES)
    assert resolved.sites["resid"].options == {}                       # no preserve: ones
    assert REGISTRIES.canonicalizers.lookup("layernorm_to_rmsnorm").changes_architecture


def test_the_rewrite_needs_centred_writers():
    text = Path(find_spec("hf-gpt2-rmsnorm").file).read_text()
    start = text.index("  - center_writers:")
    end = text.index("  - layernorm_to_rmsnorm")
    report = numeric_check(load_spec_text(text[:start] + text[end:], "uncentred.yaml"), registries=REGISTRIES)
    assert report.canonicalize_error > 1e-6                            # LN(x) != x / rms(x) when mean(x) != 0


def test_a_hidden_full_rotation_is_recovered():
    spec = find_spec("hf-gpt2-rmsnorm")
    model = build_example(spec).double()
    resolved = resolve(spec, model, registries=REGISTRIES)
    canonicalize(model, resolved)
    a = model.state_dict()
    hidden = random_transform(resolved, seed=3)
    assert (hidden["resid"] @ torch.ones(32, dtype=torch.float64) - 1).abs().max() > 0.1   # moves the ones vector
    b = act_state_dict(resolved, a, hidden)
    aligned = act_state_dict(resolved, b, REGISTRIES.matchers.lookup("weight").match(resolved, a, b).elements)
    for name in resolved.tensors:
        torch.testing.assert_close(aligned[name], a[name], rtol=1e-6, atol=1e-8)


def test_align_refuses_to_write_a_changed_architecture_as_a_standard_checkpoint(tmp_path, capsys):
    spec = find_spec("timm-vit")
    for seed in (0, 1):
        model = build_example(spec, seed=seed)
        model.symdsl_config = dict(spec.document.example.config)
        from symdsl.models import save_model

        save_model(model, tmp_path / f"m{seed}")
    code = main(["align", str(tmp_path / "m0"), str(tmp_path / "m1"), "--spec", "timm-vit-rmsnorm",
                 "-o", str(tmp_path / "out")])
    assert code == 2 and "changes the architecture (layernorm_to_rmsnorm)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
