"""The plugin system: built-ins through hooks, a real third-party package through its entry point."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from symdsl.errors import UsageError
from symdsl.plugins import hookimpl, load
from symdsl.registry import Registries

PLUGIN_SOURCE = Path(__file__).parent / "example_plugin"


def test_builtins_are_registered_through_the_hooks():
    registries = load()
    assert "symdsl-builtins" in registries.plugins
    by_category = {}
    for c in registries.contributions():
        by_category.setdefault(c.category, set()).add(c.name)
        assert c.plugin == "symdsl-builtins" or c.plugin != ""
    assert {"permutation", "orthogonal", "invertible", "stiefel", "semi_permutation"} <= by_category["group kind"]
    assert {"untie", "fold_layernorm", "center_writers"} <= by_category["canonicalizer"]
    assert "weight" in by_category["matcher"] and {"average", "interpolate"} <= by_category["merger"]
    assert {"linear", "layer_norm", "scaled_dot_product_attention"} <= by_category["op rule"]
    assert {"export", "fx"} <= by_category["capture backend"]
    assert registries.matchers.origin("weight") == "symdsl-builtins"
    assert {"digits", "text", "stdlib-text"} <= by_category["dataset"]


def test_a_duplicate_name_is_an_error_naming_both_plugins():
    class Twin:
        @hookimpl
        def symdsl_matchers(self):
            return [load().matchers["weight"]]

    with pytest.raises(UsageError, match="matcher 'weight' is contributed twice: by symdsl-builtins and by twin"):
        load(plugins={"twin": Twin()})


def test_loading_twice_gives_independent_values_and_blocking_is_by_name():
    first, second = load(), load(blocked=["symdsl-builtins"])
    assert "weight" in first.matchers and "weight" not in second.matchers
    assert second.blocked == ("symdsl-builtins",) and "symdsl-builtins" not in second.plugins
    with pytest.raises(UsageError, match="cannot block plugin 'symdsl-bultins'.*did you mean 'symdsl-builtins'"):
        load(blocked=["symdsl-bultins"])


def test_a_hand_registration_keeps_its_origin_and_survives_blocking_a_plugin():
    class Mine:
        name = "mine"

    class Notebook:
        @hookimpl
        def symdsl_matchers(self):
            return [Mine()]

    registries = load(blocked=["symdsl-builtins"]).add("matcher", "mine", Mine(), origin="my-notebook")
    assert registries.matchers.origin("mine") == "my-notebook" and "weight" not in registries.matchers
    assert load(plugins={"notebook": Notebook()}, blocked=["symdsl-builtins"]).matchers.origin("mine") == "notebook"
    assert len(Registries.empty().matchers) == 0 and not Registries.empty().plugins


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory):
    """pip-install the example plugin package (with its entry point) into a private folder."""
    target = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("build")
    source = tmp_path_factory.mktemp("src") / "example_plugin"
    shutil.copytree(PLUGIN_SOURCE, source)      # building in place would leave metadata in the repository
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                             "--no-index", "--target", str(target), str(source)],
                            capture_output=True, text=True, env={**os.environ, "TMPDIR": str(build)})
    assert result.returncode == 0, result.stderr
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}
    env.pop("SYMDSL_BLOCK_PLUGINS", None)
    return env


def _symdsl(env, *args):
    return subprocess.run([sys.executable, "-m", "symdsl", *args], capture_output=True, text=True, env=env)


def test_entry_point_plugin_is_discovered_and_listed(installed_plugin):
    result = _symdsl(installed_plugin, "plugins", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert "example" in data["plugins"]
    mine = {(c["category"], c["name"]) for c in data["contributions"] if c["plugin"] == "example"}
    assert ("matcher", "none") in mine and ("spec folder", str(PLUGIN_SOURCE.name)) not in mine
    specs = json.loads(_symdsl(installed_plugin, "specs", "--json").stdout)
    assert "example-mlp" in {s["name"] for s in specs}


def test_the_plugins_spec_checks_from_the_cli(installed_plugin):
    result = _symdsl(installed_plugin, "check", "example-mlp")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "result: OK" in result.stdout


def test_a_plugin_can_be_blocked(installed_plugin):
    blocked = _symdsl(installed_plugin, "--block", "example", "plugins", "--json")
    data = json.loads(blocked.stdout)
    assert "example" not in data["plugins"] and data["blocked"] == ["example"]
    assert all(c["plugin"] != "example" for c in data["contributions"])
    env = {**installed_plugin, "SYMDSL_BLOCK_PLUGINS": "example"}
    assert "example-mlp" not in _symdsl(env, "specs").stdout


def test_the_plugins_matcher_runs_from_the_cli(installed_plugin, tmp_path):
    for seed in (0, 1):
        trained = _symdsl(installed_plugin, "train", "vit-digits", "--steps", "3", "--seed", str(seed),
                          "-o", str(tmp_path / f"m{seed}"))
        assert trained.returncode == 0, trained.stderr
    result = _symdsl(installed_plugin, "align", str(tmp_path / "m0"), str(tmp_path / "m1"), "--matcher", "none",
                     "-o", str(tmp_path / "aligned"))
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "aligned" / "symdsl.json").read_text())["matcher"] == "none"
    blocked = _symdsl(installed_plugin, "--block", "example", "align", str(tmp_path / "m0"), str(tmp_path / "m1"),
                      "--matcher", "none", "-o", str(tmp_path / "again"))
    assert blocked.returncode == 2 and "unknown matcher 'none'" in blocked.stderr


def test_a_plugin_model_loader_is_asked_first():
    import torch

    from symdsl.models import ModelLoader, load_model

    class Registry(ModelLoader):
        name = "toy-store"

        def can_load(self, ref):
            return ref.startswith("toy:")

        def load(self, ref, checkpoint=None):
            return torch.nn.Linear(int(ref[4:]), 2)

    class Plugin:
        @hookimpl
        def symdsl_model_loaders(self):
            return [Registry()]

    registries = load(plugins={"toy-loader": Plugin()})
    assert registries.model_loaders.origin("toy-store") == "toy-loader"
    model = load_model("toy:5", loaders=registries.model_loaders.values())
    assert isinstance(model, torch.nn.Linear) and model.in_features == 5 and not model.training
    with pytest.raises(UsageError, match="cannot import module 'toy'"):
        load_model("toy:5")                      # without the plugin's loader
