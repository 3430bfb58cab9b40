"""Declared matcher and merger options, spec versions, plugin names and multi-spec check runs (issue 16).

Each bad input gets one message naming it and a non-zero exit, before any model is loaded: the
option tests pass model paths that do not exist, so a message about the option (not about the
missing model) shows that the options were checked first.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import symdsl
from symdsl.api.pipeline import matcher_options
from symdsl.cli.main import main
from symdsl.match import MatchResult
from symdsl.match.base import Matcher
from symdsl.options import OptionsError
from symdsl.plugins import load

from safety_models import gpt2_folder
from test_opt import POST_LN, opt

SPECS = Path(__file__).resolve().parents[1] / "specs"
NOWHERE = ["no-such-model-a", "no-such-model-b"]        # never loaded: options are refused first


def run(argv, capsys) -> tuple[int, str]:
    code = main(argv)
    captured = capsys.readouterr()
    err = captured.err
    assert "internal error" not in err and "Traceback" not in err
    return code, err + captured.out


def align_with(capsys, tmp_path, matcher, *options) -> tuple[int, str]:
    argv = ["align", *NOWHERE, "-o", str(tmp_path / "out"), "--matcher", matcher]
    for option in options:
        argv += ["--option", option]
    code, text = run(argv, capsys)
    assert not (tmp_path / "out").exists()
    return code, text


# --- matcher options through the command line -----------------------------------------------------


def test_a_step_count_that_is_not_an_integer(capsys, tmp_path):
    code, err = align_with(capsys, tmp_path, "learned", "steps=abc")
    assert code == 2
    assert "matcher 'learned': option steps='abc' is not an integer; options: steps (int >= 1, default 1000), " \
           "epochs (float > 0 or none, default none), lr (float > 0, default 0.003)" in err


def test_a_negative_step_count(capsys, tmp_path):
    code, err = align_with(capsys, tmp_path, "learned", "steps=-1")
    assert code == 2 and "matcher 'learned': option steps=-1 must be >= 1; options: steps (int >= 1" in err


def test_a_negative_sweep_count(capsys, tmp_path):
    code, err = align_with(capsys, tmp_path, "weight", "max_iter=-1")
    assert code == 2 and "matcher 'weight': option max_iter=-1 must be >= 0; options: max_iter (int >= 0, default 30)" \
        in err


@pytest.mark.parametrize("value", ["nan", ".nan", "inf", "-.inf"])
def test_a_tolerance_that_is_not_finite(capsys, tmp_path, value):
    code, err = align_with(capsys, tmp_path, "weight", f"tol={value}")
    assert code == 2 and "option tol=" in err and "is not finite (NaN and infinity are refused)" in err
    assert "tol (float >= 0, default 0.001)" in err


def test_a_boolean_where_a_number_is_due(capsys, tmp_path):
    code, err = align_with(capsys, tmp_path, "learned", "steps=true")
    assert code == 2 and "option steps=True is a boolean, not a number" in err


def test_an_unknown_option_name_is_refused_with_a_suggestion_and_the_list(capsys, tmp_path):
    code, err = align_with(capsys, tmp_path, "weight", "max_iters=3")
    assert code == 2
    assert "matcher 'weight': no option 'max_iters'; did you mean 'max_iter'?" in err
    assert "invertible_steps (int >= 0, default 50)" in err and "precision ('mixed' or 'float64', default 'mixed')" \
        in err


def test_a_choice_outside_the_declared_ones(capsys, tmp_path):
    code, err = align_with(capsys, tmp_path, "weight", "precision=half")
    assert code == 2 and "option precision='half' must be 'mixed' or 'float64'" in err


def test_a_lambda_sampler_that_cannot_be_read(capsys, tmp_path):
    code, err = align_with(capsys, tmp_path, "learned", "lam=uniform:2,3")
    assert code == 2 and "option lam='uniform:2,3' is not a sampler: sampler 'uniform:2,3': need 0 <= LO <= HI <= 1" \
        in err


def test_a_value_that_is_not_yaml_is_judged_as_text(capsys, tmp_path):
    code, err = align_with(capsys, tmp_path, "learned", "lam=[0.4")
    assert code == 2 and "option lam='[0.4' is not a sampler" in err


def test_bad_options_of_the_weight_matching_start_are_refused(capsys, tmp_path):
    code, err = align_with(capsys, tmp_path, "learned", "init={max_iter: -1}")
    assert code == 2
    assert "option init={'max_iter': -1} is not a set of weight-matching options (weight matching: option " \
           "max_iter=-1 must be >= 0" in err


def test_a_matcher_device_that_is_not_a_device(capsys, tmp_path):
    code, err = align_with(capsys, tmp_path, "activation", "device=nowhere")
    assert code == 2 and "matcher 'activation': option device='nowhere' is not a device (cpu, cuda or cuda:N)" in err


def test_permutations_only_for_a_matcher_without_it(capsys, tmp_path):
    code, err = run(["barrier", *NOWHERE, "--data", "digits", "--matcher", "activation", "--permutations-only"],
                    capsys)
    assert code == 2 and "matcher 'activation': no option 'permutations_only'" in err


def test_an_unknown_matcher_is_refused_before_loading(capsys, tmp_path):
    code, err = align_with(capsys, tmp_path, "wieght")
    assert code == 2 and "unknown matcher 'wieght'; did you mean 'weight'?" in err


# --- merges --------------------------------------------------------------------------------------


def test_a_universe_option_out_of_range(capsys, tmp_path):
    code, err = run(["merge", *NOWHERE, "no-such-c", "-o", str(tmp_path / "m"), "--option", "max_iter=-1"], capsys)
    assert code == 2 and "universe merge: option max_iter=-1 must be >= 0; options: max_iter (int >= 0, default 10)" \
        in err


def test_an_unknown_universe_option(capsys, tmp_path):
    code, err = run(["merge", *NOWHERE, "no-such-c", "-o", str(tmp_path / "m"), "--refine", "--option", "alpah=1"],
                    capsys)
    assert code == 2 and "universe merge: no option(s) ['alpah']" in err and "alpha (float > 0, default 0.1)" in err


def test_a_refinement_option_out_of_range(capsys, tmp_path):
    code, err = run(["merge", *NOWHERE, "no-such-c", "-o", str(tmp_path / "m"), "--refine", "--option",
                     "validation=1.5"], capsys)
    assert code == 2 and "universe refinement: option validation=1.5 must be < 1" in err


def test_a_merge_weight_that_is_not_finite(capsys, tmp_path):
    code, err = run(["merge", *NOWHERE, "-o", str(tmp_path / "m"), "--weights", "nan", "1"], capsys)
    assert code == 2 and "merge weight 1 is nan: weights must be finite numbers" in err


def test_one_merge_weight_per_model(capsys, tmp_path):
    code, err = run(["merge", *NOWHERE, "-o", str(tmp_path / "m"), "--weights", "1", "2", "3"], capsys)
    assert code == 2 and "3 merge weights for 2 models" in err


def test_an_unknown_merger(capsys, tmp_path):
    code, err = run(["merge", *NOWHERE, "-o", str(tmp_path / "m"), "--merger", "averge"], capsys)
    assert code == 2 and "unknown merger 'averge'; did you mean 'average'?" in err


def test_merger_options_are_declared_and_checked():
    interpolate = load().mergers["interpolate"]
    states = [{"w": torch.ones(2)}, {"w": torch.zeros(2)}]
    assert torch.equal(interpolate.merge(states, lam="0.25")["w"], torch.full((2,), 0.25))
    with pytest.raises(OptionsError, match=r"merger 'interpolate': option lam=nan is not finite .*options: lam "
                                           r"\(float, default 0.5\)"):
        interpolate.merge(states, lam=math.nan)
    with pytest.raises(OptionsError, match="merger 'average': no option 'lam'; options: none"):
        load().mergers["average"].merge(states, lam=0.5)


# --- the API and the matchers themselves ---------------------------------------------------------


def test_the_api_refuses_before_any_work():
    never = torch.nn.Linear(2, 2)          # no spec matches it: the options are refused before the spec is sought
    with pytest.raises(OptionsError, match="matcher 'learned': option steps='abc' is not an integer"):
        symdsl.align(never, never, matcher="learned", steps="abc")
    with pytest.raises(OptionsError, match="matcher 'weight': option tol=nan is not finite"):
        symdsl.merge([never, never], tol=math.nan)


def test_text_values_are_coerced_to_the_declared_type():
    assert matcher_options("learned", {"steps": "20", "lr": "1e-2", "freeze": ["resid"]}, load()) == \
        {"steps": 20, "lr": 0.01, "freeze": ("resid",)}


def test_a_matcher_called_directly_checks_its_options():
    with pytest.raises(OptionsError, match="matcher 'weight': option max_iter=-1 must be >= 0"):
        load().matchers["weight"].match(None, {}, {}, max_iter=-1)


def test_cli_option_strings_reach_the_matcher_coerced(tmp_path, capsys):
    a, b = gpt2_folder(tmp_path / "a", 0), gpt2_folder(tmp_path / "b", 1)
    code, out = run(["align", str(a), str(b), "-o", str(tmp_path / "out"), "--no-verify", "--option", "max_iter=1",
                     "--option", "tol=0", "--option", "precision=float64"], capsys)
    assert code == 0, out
    record = json.loads((tmp_path / "out" / "symdsl.json").read_text())
    # with tol=0 only max_iter stops the sweeps: start, anchored start, then exactly one sweep
    assert len(record["objective"]) == 3 and record["info"]["sweeps"] == 2


class Undeclared(Matcher):
    """A third party's matcher written before options were declared: it keeps whatever it is given."""

    name = "undeclared"

    def match(self, resolved, state_a, state_b, *, seed=0, progress=None, **options):
        self.seen = dict(options)
        return MatchResult({name: resolved.sites[name].kind.identity(resolved.sites[name].size)
                            for name in resolved.sites}, self.name)


MLP_SPEC = ('symdsl: 1\nname: mlp\nsites: {u: {group: permutation, size: 8}}\n'
            'tensors: {0.weight: "u _", 0.bias: u, 2.weight: "_ u\'"}\ninvariant: [2.bias]\n')


def test_a_matcher_without_declared_options_gets_them_unchecked():
    matcher = Undeclared()
    registries = load().add("matcher", "undeclared", matcher, origin="third-party")
    nets = [torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)) for _ in range(2)]
    symdsl.align(*nets, symdsl.load_spec_text(MLP_SPEC), "undeclared", verify=False, registries=registries,
                 anything="goes", steps=-1)
    assert matcher.seen == {"anything": "goes", "steps": -1}


# --- listing -------------------------------------------------------------------------------------


def test_plugins_lists_every_matchers_options(capsys):
    code, out = run(["plugins"], capsys)
    assert code == 0
    assert "steps (int >= 1, default 1000): optimizer steps" in out
    assert "max_iter (int >= 0, default 30)" in out and "max_samples (int >= 1, default 65536)" in out
    assert "lam (float, default 0.5)" in out
    code, out = run(["plugins", "--json"], capsys)
    rows = {(r["category"], r["name"]): r for r in json.loads(out)["contributions"]}
    steps = next(o for o in rows["matcher", "learned"]["options"] if o["name"] == "steps")
    assert steps == {"name": "steps", "type": "int >= 1", "default": 1000, "python_only": False,
                     "description": "optimizer steps (unless epochs is given)"}
    assert rows["merger", "average"]["options"] == []


# --- spec version, plugin names ------------------------------------------------------------------


@pytest.mark.parametrize("version, shown", [("true", "bool True"), ("1.0", "float 1.0"), ('"1"', "str '1'")])
def test_the_spec_version_must_be_the_integer_1(capsys, tmp_path, version, shown):
    spec = tmp_path / "mlp.yaml"
    spec.write_text(MLP_SPEC.replace("symdsl: 1", f"symdsl: {version}"))
    code, err = run(["check", str(spec)], capsys)
    assert code == 1 and f"{spec}:1:1: symdsl: expected an integer, got {shown}" in err
    assert "the first line of a spec reads 'symdsl: 1'" in err


def test_an_unknown_plugin_in_the_environment_is_refused(capsys, monkeypatch):
    monkeypatch.setenv("SYMDSL_BLOCK_PLUGINS", "symdsl-bultins")
    code, err = run(["specs"], capsys)
    assert code == 2 and "cannot block plugin 'symdsl-bultins'" in err and "did you mean 'symdsl-builtins'" in err
    assert "plugins: symdsl-builtins" in err


# --- several specs against one model -------------------------------------------------------------


@pytest.fixture(scope="module")
def post_ln(tmp_path_factory):
    folder = tmp_path_factory.mktemp("opt") / "post-ln"
    opt(**POST_LN).save_pretrained(folder)
    return str(folder)


def test_a_spec_that_does_not_claim_the_model_is_reported_and_the_run_goes_on(capsys, post_ln):
    code, out = run(["check", "hf-opt", "hf-opt-postln", "hf-gpt2", "--model", post_ln, "--static-only"], capsys)
    assert code == 0
    assert "refused: spec 'hf-opt' does not claim this OPTForCausalLM: its matches.config has do_layer_norm_before " \
           "= True, the model's is False" in out
    assert "refused: spec 'hf-gpt2' does not claim this OPTForCausalLM: its matches name GPT2LMHeadModel" in out
    assert "spec hf-opt-postln" in out and "result: OK" in out


def test_a_claiming_spec_that_fails_still_fails_the_run(capsys, post_ln, tmp_path):
    broken = tmp_path / "broken-postln.yaml"
    text = (SPECS / "hf-opt-postln.yaml").read_text().replace("name: hf-opt-postln", "name: broken-postln")
    broken.write_text(text.replace("mlp.${i}:   {group: permutation", "mlp.${i}:   {group: orthogonal"))
    assert "mlp.${i}:   {group: orthogonal" in broken.read_text()       # a rotation of ReLU units: wrong
    code = main(["check", "hf-opt", str(broken), "--model", post_ln, "--static-only", "--json"])
    results = json.loads(capsys.readouterr().out)
    assert code == 1 and results[0]["ok"] is None and "refused" in results[0] and results[1]["ok"] is False


def test_a_run_where_no_spec_claims_the_model_fails(capsys, post_ln):
    code, out = run(["check", "hf-opt", "hf-gpt2", "--model", post_ln, "--static-only"], capsys)
    assert code == 1 and "none of the 2 specs claims the model" in out


def test_an_invalid_spec_among_several_does_not_stop_the_others(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(MLP_SPEC.replace("symdsl: 1", "symdsl: true"))
    code, out = run(["check", str(bad), "hf-gpt2", "--static-only"], capsys)
    assert code == 1 and "symdsl: expected an integer, got bool True" in out
    assert "spec hf-gpt2" in out and "result: OK" in out


def test_a_single_spec_refusing_the_model_is_still_a_located_failure(capsys, post_ln):
    code, out = run(["check", "hf-opt", "--model", post_ln, "--static-only"], capsys)
    assert code == 1 and "hf-opt.yaml" in out and "matches.config.do_layer_norm_before" in out
    assert "do_layer_norm_before = True, but this model's is False" in out


def test_declared_defaults_are_the_defaults_the_code_runs_with():
    from symdsl.api.universe_merge import RefineOptions
    from symdsl.learn.universe_refine import DEFAULTS
    from symdsl_builtins.matchers.weight_problem import PRECISIONS
    from symdsl_builtins.matchers.weight import WeightOptions

    assert {k: RefineOptions.model_fields[k].default for k in DEFAULTS} == DEFAULTS
    assert set(WeightOptions.model_fields["precision"].annotation.__args__) == set(PRECISIONS)
