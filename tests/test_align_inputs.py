"""``inputs=`` / ``--inputs NAME=SHAPE`` on align, merge and barrier: the shapes of the example the
spec is verified on before matching (the syntax and errors of ``symdsl check --inputs``)."""
from __future__ import annotations

import json

import pytest
import torch

import symdsl
from conftest import REGISTRIES
from symdsl.api.verify import fingerprint
from symdsl.cli.main import main
from symdsl.errors import SymdslError, UsageError
from symdsl.models import save_model
from symdsl.models.build import perturb_parameters
from symdsl.spec.inputs import with_input_shapes

timm = pytest.importorskip("timm")


@pytest.fixture(autouse=True)
def own_checks_cache(tmp_path, monkeypatch):
    """A fresh cache of passed checks: every call here really runs the check on the shapes given."""
    monkeypatch.setenv("SYMDSL_CACHE", str(tmp_path / "cache"))


def vit(seed: int) -> torch.nn.Module:
    """A timm ViT for 3x32x32 images (patch 16, hidden 32, 2 blocks, 4 heads), every parameter perturbed."""
    torch.manual_seed(seed)
    kwargs = dict(img_size=32, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0)
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, **kwargs)
    model.symdsl_timm = {"name": "deit_tiny_patch16_224", "kwargs": kwargs}      # how a saved folder rebuilds it
    return perturb_parameters(model, seed=seed).eval()


def test_the_inputs_shape_the_example_the_spec_is_verified_on():
    a, b = vit(0), vit(1)
    aligned = symdsl.align(a, b, inputs={"x": (1, 3, 32, 32)})
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(aligned.model(x), b(x), atol=1e-4)
    # the default example follows the model (2x3x32x32): an override is a different check, cached apart ...
    spec = symdsl.find_spec("timm-vit")
    assert fingerprint(with_input_shapes(spec, {"x": (1, 3, 32, 32)}), a, REGISTRIES) != fingerprint(spec, a, REGISTRIES)
    # ... and really the one run: a shape the model rejects fails the check align runs first
    for call in (lambda: symdsl.align(a, b, inputs={"x": (1, 3, 48, 48)}),
                 lambda: symdsl.merge([a, b], inputs={"x": (1, 3, 48, 48)})):
        with pytest.raises(SymdslError, match=r"Input height \(48\) doesn.t match model \(32\)"):
            call()


def test_barrier_takes_inputs_too():
    from symdsl.data import load_dataset
    from symdsl.experiments.train import small_vit

    digits = load_dataset("digits")
    a, b = (small_vit(digits, seed=s, embed_dim=16) for s in (0, 1))
    report = symdsl.barrier(a, b, digits, points=3, max_batches=1, inputs={"x": (1, 1, 8, 8)})
    assert set(report.barriers) == {"vanilla", "weight matching"}
    with pytest.raises(SymdslError, match=r"Input height \(6\) doesn't match model \(8\)"):
        symdsl.barrier(a, b, digits, points=3, max_batches=1, inputs={"x": (1, 1, 6, 6)})


def test_the_commands_take_inputs_and_name_the_spec_s_line_for_a_bad_name(tmp_path, capsys):
    for seed in (0, 1):
        save_model(vit(seed), tmp_path / f"v{seed}")
    a, b = str(tmp_path / "v0"), str(tmp_path / "v1")
    assert main(["align", a, b, "-o", str(tmp_path / "out"), "--inputs", "x=1x3x32x32"]) == 0
    assert main(["merge", a, b, "-o", str(tmp_path / "merged"), "--inputs", "x=1x3x32x32"]) == 0
    capsys.readouterr()
    spec_file = symdsl.find_spec("timm-vit").file
    line, _ = symdsl.find_spec("timm-vit").source.where(("example", "inputs"))
    for command in (["align", a, b, "-o", str(tmp_path / "bad")], ["merge", a, b, "-o", str(tmp_path / "bad")],
                    ["barrier", a, b, "--data", "digits"]):
        assert main([*command, "--inputs", "pixel_values=1x3x32x32"]) == 2
        err = capsys.readouterr().err
        assert "spec 'timm-vit' has no example input 'pixel_values'" in err and f"{spec_file}:{line}" in err, err
    # bad syntax is refused before any model is loaded, with check's wording
    assert main(["align", "missing-a", "missing-b", "-o", str(tmp_path / "bad"), "--inputs", "x=1 by 3"]) == 2
    assert "--inputs 'x=1 by 3': expected NAME=SHAPE" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    assert json.loads((tmp_path / "out" / "symdsl.json").read_text())["spec"] == "timm-vit"


def test_an_unknown_input_name_is_a_usage_error_in_python():
    with pytest.raises(UsageError, match=r"has no example input 'pixels'.*timm-vit.yaml:\d+: example.inputs"):
        symdsl.align(vit(0), vit(1), inputs={"pixels": (1, 3, 32, 32)})
