"""A group kind that only a plugin knows works end to end: numeric check, weight and learned matching.

The example plugin (tests/example_plugin) contributes ``signed_permutation`` through its
``symdsl_group_kinds`` hook and ships ``example-vit-signed-qk``, the timm-vit spec with each
head's query/key basis a signed permutation. Nothing in symdsl or its built-in plugin mentions
that kind: everything the core needs it asks the kind (``GroupKind`` capabilities and methods).
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch

from conftest import relative_distance
from symdsl.act import act_state_dict, random_transform
from symdsl.api.pipeline import match, prepare
from symdsl.canon import canonicalize
from symdsl.check import numeric_check
from symdsl.check.static import static_check
from symdsl.experiments.train import small_vit, train
from symdsl.models import build_example
from symdsl.models.build import make_inputs
from symdsl.plugins import load
from symdsl.spec import load_spec_text, model_config, resolve
from symdsl.spec.registry import find_spec

SPEC = "example-vit-signed-qk"
KIND = "signed_permutation"
F64 = torch.float64
REPOSITORY = Path(__file__).parent.parent
EXAMPLE_PLUGIN = Path(__file__).parent / "example_plugin"


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """``(module, registries)``: the example plugin found through its ``symdsl`` entry point, as an
    install would be, and the registries ``symdsl.plugins.load()`` then builds.

    The entry point is declared by a hand-written ``.dist-info`` folder (what pip writes) next to
    the package's source on ``sys.path``, so that no build tools are needed.
    """
    site = tmp_path_factory.mktemp("site")
    info = site / "symdsl_example_plugin-0.1.0.dist-info"
    info.mkdir()
    info.joinpath("METADATA").write_text("Metadata-Version: 2.1\nName: symdsl-example-plugin\nVersion: 0.1.0\n")
    info.joinpath("entry_points.txt").write_text("[symdsl]\nexample = symdsl_example_plugin.plugin\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("SYMDSL_BLOCK_PLUGINS", raising=False)
        patch.syspath_prepend(str(EXAMPLE_PLUGIN))
        patch.syspath_prepend(str(site))
        importlib.invalidate_caches()
        try:
            yield importlib.import_module("symdsl_example_plugin.signed_permutation"), load()
        finally:
            for name in [m for m in sys.modules if m.startswith("symdsl_example_plugin")]:
                del sys.modules[name]


def canonical_example(registries, name: str = SPEC):
    spec = find_spec(name, registries)
    model = build_example(spec).double()
    resolved = resolve(spec, model, registries=registries)
    canonicalize(model, resolved)
    return spec, model, resolved


def _outputs(spec, model, resolved, state):
    inputs = make_inputs(spec, {**model_config(model), **resolved.dims})
    model.load_state_dict(state)
    with torch.no_grad():
        return model(**inputs)


def test_the_kind_comes_only_from_the_plugin(plugin):
    module, registries = plugin
    contributed = {(c.category, c.name, c.plugin) for c in registries.contributions()}
    assert ("group kind", KIND, "example") in contributed
    _, _, resolved = canonical_example(registries)
    qk = resolved.sites["qk.0"].kind
    assert isinstance(qk, module.SignedPermutation) and qk.name == KIND
    with pytest.raises(Exception, match=f"unknown group kind '{KIND}'"):    # without the plugin: a clear error
        canonical_example(load(blocked=["example"]).add("spec folder", "x", registries.spec_folders.lookup(
            next(k for k in registries.spec_folders if "example_plugin" in k)), origin="test"))
    # no core file names it: the core asks the kind, never its name
    core = [*REPOSITORY.joinpath("symdsl").rglob("*.py"), *REPOSITORY.joinpath("plugins").rglob("*.py")]
    assert not [str(f) for f in core if KIND in f.read_text() or "SignedPermutation" in f.read_text()]


def test_numeric_check_passes_in_float64(plugin):
    _, registries = plugin
    report = numeric_check(find_spec(SPEC, registries), registries=registries)
    assert report.ok, report.failed
    groups = {row.site: row.group for row in report.sites}
    assert groups["qk.0"] == KIND and groups["qk.1"] == KIND
    assert all(row.relative_error < 1e-12 for row in report.sites if row.group == KIND)


def test_numeric_check_rejects_the_kind_where_it_is_no_symmetry(plugin):
    """Behind GELU a sign flip changes the function: declared on the MLP units, the check fails there."""
    _, registries = plugin
    text = EXAMPLE_PLUGIN.joinpath("symdsl_example_plugin", "specs", "vit-signed-qk.yaml").read_text()
    wrong = text.replace("mlp.${i}:   {group: permutation", "mlp.${i}:   {group: signed_permutation")
    assert wrong != text
    report = numeric_check(load_spec_text(wrong), registries=registries)
    assert not report.ok and set(report.failed_sites) == {"mlp.0", "mlp.1"}


def test_static_check_passes(plugin):
    _, registries = plugin
    report = static_check(find_spec(SPEC, registries), registries=registries)
    assert report.ok and not report.findings


@pytest.mark.parametrize("hidden_sites", [["qk.0", "qk.1"], None], ids=["signed-alone", "every-site"])
def test_weight_matching_recovers_a_hidden_signed_permutation(plugin, hidden_sites):
    _, registries = plugin
    spec, model, resolved = canonical_example(registries)
    kind = resolved.sites["qk.0"].kind
    a = {k: v.clone() for k, v in model.state_dict().items()}
    hidden = random_transform(resolved, hidden_sites, seed=5)
    assert all(kind.contains(hidden[s]) and not torch.equal(hidden[s], kind.identity(8, batch=4))
               for s in ("qk.0", "qk.1"))
    b = act_state_dict(resolved, a, hidden)
    assert relative_distance(resolved, b, a) > 0.3
    result = registries.matchers["weight"].match(resolved, a, b)
    aligned = act_state_dict(resolved, b, result.elements)
    assert relative_distance(resolved, aligned, a) < 1e-6
    assert all(kind.contains(result.elements[s]) for s in ("qk.0", "qk.1"))
    if hidden_sites is not None:     # alone, each head's map is undone exactly: g = hidden^-1
        for site in hidden_sites:
            assert torch.equal(result.elements[site], kind.inverse(hidden[site])), site
    reference = _outputs(spec, model, resolved, a)
    torch.testing.assert_close(_outputs(spec, model, resolved, aligned), reference, rtol=1e-9, atol=1e-9)


def test_permutations_only_solves_the_kind_as_plain_permutations(plugin):
    _, registries = plugin
    _, model, resolved = canonical_example(registries)
    a = model.state_dict()
    b = act_state_dict(resolved, a, random_transform(resolved, seed=4))
    result = registries.matchers["weight"].match(resolved, a, b, permutations_only=True)
    for site in ("qk.0", "qk.1"):     # the kind's permutation_restriction: its elements with all signs +1
        g = result.elements[site]
        assert set(g.unique().tolist()) <= {0.0, 1.0} and torch.equal(g.sum(-1), torch.ones(4, 8, dtype=F64))


@pytest.fixture(scope="module")
def digits():
    from symdsl.data import load_dataset

    return load_dataset("digits")


def test_learned_matching_trains_the_kind_and_never_ends_worse_than_its_start(plugin, digits):
    _, registries = plugin
    models = []
    for seed in (0, 1):
        model = small_vit(digits, embed_dim=16, depth=1, num_heads=2, seed=seed)
        train(model, digits, steps=40, seed=seed, threads=1, evaluate_split=None)
        models.append(model)
    prepared = prepare(models, find_spec(SPEC, registries), registries=registries)
    kind = prepared.resolved.sites["qk.0"].kind
    assert kind.name == KIND
    result = match(prepared, 1, "learned", data=digits, steps=20, eval_every=10, registries=registries)
    assert result.info["start"]["matcher"] == "weight"
    assert "qk.0" in result.info["learned_sites"]                     # trained through kind.parametrize
    assert kind.contains(result.elements["qk.0"])
    assert result.info["best_validation"] <= result.info["start_validation"]


def test_the_straight_through_parametrisation_is_hard_forward_and_identity_backward(plugin):
    kind = plugin[0].SignedPermutation()
    g0 = kind.random(5, generator=torch.Generator().manual_seed(1))
    p = kind.parametrize(g0)
    assert torch.equal(p.element(), g0) and p.straight_through
    target = torch.randn(5, 5, generator=torch.Generator().manual_seed(2), dtype=F64)
    primal, dual = p.dense()
    assert torch.equal(primal.detach(), g0) and torch.equal(dual.detach(), g0)
    (-(target * primal).sum()).backward()
    torch.testing.assert_close(p.scores.grad, -target)      # the gradient passes straight to the scores
    with torch.no_grad():
        p.scores.copy_(target)
    assert torch.equal(p.element(), kind.project(target)) and kind.contains(p.element())


def test_the_plugin_kind_s_docstring_examples_run(plugin):
    import doctest

    assert doctest.testmod(plugin[0], optionflags=doctest.ELLIPSIS).failed == 0
