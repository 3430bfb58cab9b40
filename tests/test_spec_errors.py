"""How broken specs are reported: every problem names file:line:col, the key path and the offending
name, with a suggestion where one exists; one mistake gives one problem (no cascade); and nothing
escapes as a raw KeyError/TypeError/... from deep inside."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from toy_models import ATTENTION_SPEC, MLP_SPEC, ToyAttention, mlp

from symdsl.errors import Problem, SpecError, SymdslError, UsageError
from symdsl.spec import load_spec, load_spec_text, resolve
from conftest import REGISTRIES

ROOT = Path(__file__).resolve().parents[1]
FILE = "spec.yaml"


# --------------------------------------------------------------------------- helpers


def problems(text: str, model: nn.Module | None = None) -> list[Problem]:
    """The problems a spec text has (on ``model`` when given); fails if it is fine."""
    with pytest.raises(SpecError) as info:
        spec = load_spec_text(text, FILE)
        if model is not None:
            resolve(spec, model, registries=REGISTRIES)
    assert info.value.problems, "a SpecError must carry its problems"
    return info.value.problems


def one_problem(text: str, model: nn.Module | None = None) -> Problem:
    found = problems(text, model)
    assert len(found) == 1, "expected exactly one problem, got:\n" + "\n".join(map(str, found))
    return found[0]


def position(text: str, needle: str, nth: int = 0) -> tuple[int, int]:
    """(line, column), 1-based, of the nth occurrence of ``needle`` in ``text``."""
    start = -1
    for _ in range(nth + 1):
        start = text.index(needle, start + 1)
    line = text.count("\n", 0, start) + 1
    column = start - (text.rfind("\n", 0, start) + 1) + 1
    return line, column


def assert_at(problem: Problem, text: str, needle: str, path: str, *words: str, nth: int = 0) -> str:
    """The problem sits at ``needle`` (file:line:col), under key ``path``, and mentions every word."""
    line, column = position(text, needle, nth)
    shown = str(problem)
    assert (problem.file, problem.line, problem.column) == (FILE, line, column), shown
    assert ".".join(map(str, problem.path)) == path, shown
    assert shown.startswith(f"{FILE}:{line}:{column}: {path}: "), shown
    for word in words:
        assert word in shown, f"{word!r} not in:\n{shown}"
    return shown


def edit(old: str, new: str, text: str = MLP_SPEC) -> str:
    assert old in text, old
    return text.replace(old, new, 1)




class Tied(nn.Module):
    """An embedding whose output layer shares its weight (like GPT-2's lm_head and wte)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(5, 4)
        self.out = nn.Linear(4, 5, bias=False)
        self.out.weight = self.emb.weight


TIED_SPEC = """\
symdsl: 1
name: tied
sites:
  resid: {group: KIND, size: 4}
tensors:
  emb.weight: "_ resid"
  out.weight: "_ resid'"
tied:
  - [emb.weight, out.weight]
"""


@pytest.fixture(scope="module")
def gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=16, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config).eval()


GPT2_SPEC = (ROOT / "specs" / "hf-gpt2.yaml").read_text()


def test_the_fixtures_are_valid():
    resolve(load_spec_text(MLP_SPEC), mlp(), registries=REGISTRIES)
    resolve(load_spec_text(ATTENTION_SPEC), ToyAttention(), registries=REGISTRIES)
    resolve(load_spec_text(TIED_SPEC.replace("KIND", "orthogonal")), Tied(), registries=REGISTRIES)


def test_the_gpt2_fixture_is_valid(gpt2):
    resolve(load_spec_text(GPT2_SPEC, FILE), gpt2, registries=REGISTRIES)


# --------------------------------------------------------------------------- structure (load time)


def test_unknown_top_level_key_suggests_the_right_one():
    text = MLP_SPEC + "tensor: {a: b}\n"
    p = one_problem(text)
    assert_at(p, text, "tensor: {a: b}", "tensor", "unknown key 'tensor'", "did you mean 'tensors'?")
    assert "keys allowed here" in p.hint and "invariant" in p.hint


def test_unknown_nested_key_suggests_from_its_own_level():
    text = edit("{group: permutation, size: d}", "{group: permutation, sise: d}")
    p = one_problem(text)  # not also "required key 'size' is missing"
    assert_at(p, text, "sise", "sites.hidden.sise", "unknown key 'sise'", "did you mean 'size'?")
    assert "size_in" in p.hint


def test_unknown_key_in_a_head_suggests_a_head_key():
    text = MLP_SPEC + "heads:\n  extra:\n    tensor: {a: b}\n"
    p = one_problem(text)
    assert_at(p, text, "tensor: {a: b}", "heads.extra.tensor", "did you mean 'tensors'?")


def test_a_key_from_another_level_is_not_suggested_as_itself():
    text = MLP_SPEC + "preserve: ones\n"
    p = one_problem(text)
    shown = assert_at(p, text, "preserve: ones", "preserve", "unknown key 'preserve'")
    assert "did you mean 'preserve'" not in shown


def test_missing_required_key():
    text = edit("name: mlp\n", "")
    p = one_problem(text)
    assert_at(p, text, "symdsl: 1", "name", "required key 'name' is missing")


def test_missing_required_nested_key_points_at_its_mapping():
    text = edit("{group: permutation, size: d}", "{size: d}")
    p = one_problem(text)
    assert_at(p, text, "hidden: {size", "sites.hidden.group", "required key 'group' is missing")


@pytest.mark.parametrize("version, words", [("2", "unsupported spec language version 2; this symdsl reads version 1"),
                                            ("one", "expected an integer, got str 'one'")])
def test_wrong_language_version(version, words):
    text = edit("symdsl: 1", f"symdsl: {version}")
    p = one_problem(text)
    shown = assert_at(p, text, "symdsl:", "symdsl", words)
    assert "Value error" not in shown and "symdsl: 1" in p.hint


def test_duplicate_yaml_key_points_at_the_second_one():
    text = edit("  0.bias: hidden\n", "  0.bias: hidden\n  0.bias: hidden\n")
    p = one_problem(text)
    assert_at(p, text, "0.bias", "tensors.0.bias", "duplicate key '0.bias'", nth=1)
    assert "merge" in p.hint


def test_invalid_yaml():
    text = edit("invariant: [2.bias]", "invariant: [2.bias")
    p = one_problem(text)
    assert p.file == FILE and p.line is not None and p.path == ()
    assert str(p).startswith(f"{FILE}:{p.line}:{p.column}: not valid YAML")
    assert "quoted" not in p.hint


def test_unquoted_template_in_a_flow_mapping_gets_a_quoting_hint():
    text = MLP_SPEC + "repeat: {i: 1}\ncanonicalize:\n  - fold_layernorm: {norm: h.${i}.ln_1, readers: [x]}\n"
    p = one_problem(text)
    line, column = position(text, "{i}.ln_1")
    assert (p.line, p.column) == (line, column)
    assert "not valid YAML" in p.message
    assert 'must be quoted: "h.${i}.ln_1"' in p.hint


def test_quoting_hint_names_the_unquoted_scalar():
    text = MLP_SPEC + "repeat: {i: 1}\ntied:\n  - [a.${i}.x,\n     b]\n"
    p = one_problem(text)
    assert p.line == position(text, "a.${i}.x")[0]
    assert p.hint.endswith('must be quoted: "a.${i}.x"')


def test_problem_text_without_a_position():
    assert str(Problem("boom", (), "f.yaml")) == "f.yaml: boom"
    assert str(Problem("boom", ("a", 0), "f.yaml", 3, None, "fix")) == "f.yaml:3:1: a.0: boom\n    hint: fix"


def test_top_level_must_be_a_mapping():
    p = one_problem("- a\n- b\n")
    assert "YAML mapping at the top level" in p.message and (p.line, p.column) == (1, 1)
    assert "a spec must be" in one_problem("").message


@pytest.mark.parametrize("value, words", [("4.5", "got float 4.5"), ("4.0", "got float 4.0"), ("[4]", "got list [4]"),
                                          ("true", "got bool True"), ("", "got nothing (null)")])
def test_sizes_must_be_integers_or_expressions_one_problem_each(value, words):
    text = edit("size: d}", f"size: {value}}}")
    p = one_problem(text)  # not one problem per union member ('size.int', 'size.str')
    assert_at(p, text, "size:", "sites.hidden.size", "expected an integer or a dimension expression", words)


def test_wrong_container_types_read_plainly():
    text = edit('  0.bias: hidden\n', '  0.bias: 4\n')
    assert_at(one_problem(text), text, "0.bias", "tensors.0.bias", "expected a string, got int 4")
    text = edit("{group: permutation, size: d}", "permutation")
    assert_at(one_problem(text), text, "hidden:", "sites.hidden", "expected a mapping")


def test_unreadable_file(tmp_path):
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "nope.yaml")
    assert "cannot read spec file" in str(info.value) and "nope.yaml" in str(info.value)


def test_problems_are_listed_under_one_heading():
    text = MLP_SPEC + "tensor: {}\nsitez: {}\n"
    err_text = str(pytest.raises(SpecError, load_spec_text, text, FILE).value)
    assert err_text.startswith("2 problems in spec:\n")
    assert f"  {FILE}:11:1: tensor: unknown key 'tensor'" in err_text
    assert f"  {FILE}:12:1: sitez: unknown key 'sitez'; did you mean 'sites'?" in err_text


# --------------------------------------------------------------------------- sites and patterns


def test_unbound_name_in_a_pattern_suggests_a_site():
    text = edit("0.bias: hidden", "0.bias: hiden")
    p = one_problem(text, mlp())
    assert_at(p, text, "0.bias", "tensors.0.bias", "name 'hiden'", "'0.bias'", "did you mean 'hidden'?")
    assert "'sites' or 'dims'" in p.hint


def test_malformed_pattern_names_its_column():
    text = edit('0.weight: "hidden _"', '0.weight: "(hidden _"')
    p = one_problem(text, mlp())
    assert_at(p, text, "0.weight", "tensors.0.weight", "missing ')'", "column 9 of the pattern")


def test_unknown_group_kind_suggests_one():
    text = edit("group: permutation", "group: permutaton")
    p = one_problem(text, mlp())
    shown = assert_at(p, text, "group: permutaton", "sites.hidden.group", "unknown group kind 'permutaton'",
                      "did you mean 'permutation'?")
    assert "orthogonal" in shown  # the known kinds are listed


def test_bad_group_option():
    text = edit("{group: permutation, size: d}", "{group: orthogonal, size: d, preserve: twos}")
    p = one_problem(text, mlp())
    assert_at(p, text, "preserve: twos", "sites.hidden.preserve", "'twos'", "('ones',)")


def test_option_on_a_kind_without_options():
    text = edit("{group: permutation, size: d}", "{group: permutation, size: d, preserve: ones}")
    p = one_problem(text, mlp())
    assert_at(p, text, "preserve: ones", "sites.hidden.preserve", "has no option 'preserve'")


def test_per_must_name_a_permutation_site():
    text = edit("ov:    {group: invertible, size: k, per: heads}", "ov:    {group: invertible, size: k, per: resid}",
                ATTENTION_SPEC)
    p = one_problem(text, ToyAttention())
    assert_at(p, text, "per: resid", "sites.ov.per", "'per: resid'", "'resid' is orthogonal",
              "must name a permutation site or a dimension")


def test_per_naming_nothing_suggests():
    text = edit("per: heads}", "per: haeds}", ATTENTION_SPEC)
    p = one_problem(text, ToyAttention())
    assert_at(p, text, "per: haeds", "sites.qk.per", "'per: haeds' names no site or dimension", "did you mean 'heads'?")


def test_per_parent_missing_from_a_tensor():
    text = edit('proj.weight: "resid (heads ov\')"', 'proj.weight: "resid (_ ov\')"', ATTENTION_SPEC)
    p = one_problem(text, ToyAttention())
    assert_at(p, text, "proj.weight", "tensors.proj.weight", "site 'ov' is declared per 'heads'",
              "'proj.weight' has no 'heads' factor")
    assert "(heads ov)" in p.hint


def test_pattern_axis_count_mismatch():
    text = edit("0.bias: hidden", '0.bias: "hidden _"')
    p = one_problem(text, mlp())
    assert_at(p, text, "0.bias", "tensors.0.bias", "'hidden _' has 2 axes", "'0.bias' has shape (4,)")


def test_composite_size_mismatch():
    text = edit('0.weight: "hidden _"', '0.weight: "(hidden 2) _"')
    p = one_problem(text, mlp())
    assert_at(p, text, "0.weight", "tensors.0.weight", "axis 0 of '0.weight' has size 4", "4*2 = 8")


def test_split_size_mismatch():
    text = edit('qkv.bias: "[heads qk | heads qk\' | heads ov]"', 'qkv.bias: "[heads qk | heads ov]"', ATTENTION_SPEC)
    p = one_problem(text, ToyAttention())
    assert_at(p, text, "qkv.bias", "tensors.qkv.bias", "has size 24", "2*4 + 2*4 = 16")


def test_dimension_cannot_be_dual():
    text = edit('0.weight: "hidden _"', "0.weight: \"hidden d'\"")
    p = one_problem(text, mlp())
    assert_at(p, text, "0.weight", "tensors.0.weight", "'d' is a dimension, not a site")


def test_site_sizes_must_be_positive():
    text = edit("size: d}", "size: -4}")
    assert_at(one_problem(text, mlp()), text, "size: -4", "sites.hidden.size", "size -4", "must be positive")


def test_square_kind_with_size_in():
    text = edit("size: d}", "size: d, size_in: 3}")
    assert_at(one_problem(text, mlp()), text, "size_in", "sites.hidden.size_in", "square")


def test_site_declared_twice():
    text = edit("sites:\n", "repeat: {i: 1}\nsites:\n  hidden.${i}: {group: permutation, size: d}\n"
                "  hidden.0: {group: permutation, size: d}\n")
    p = problems(text, mlp())[0]
    assert_at(p, text, "hidden.0:", "sites.hidden.0", "site 'hidden.0' is declared twice", "sites.hidden.${i}")


def test_unused_site():
    text = edit("sites:\n", "sites:\n  extra: {group: permutation, size: 3}\n")
    p = one_problem(text, mlp())
    assert_at(p, text, "extra:", "sites.extra", "site 'extra' is declared but no tensor uses it")


# --------------------------------------------------------------------------- tensors and coverage


def test_model_tensor_neither_bound_nor_invariant():
    text = edit("invariant: [2.bias]\n", "")
    p = one_problem(text, mlp())
    assert_at(p, text, "tensors:", "tensors", "model tensor '2.bias' (2,)", "neither bound nor declared invariant")
    assert "add '2.bias' under 'tensors'" in p.hint and "'invariant'" in p.hint


def test_spec_tensor_not_in_the_model():
    text = edit("  0.bias: hidden\n", "  0.bias: hidden\n  0.bais: hidden\n")
    p = one_problem(text, mlp())
    assert_at(p, text, "0.bais", "tensors.0.bais", "tensor '0.bais' is not in the model", "did you mean '0.bias'?")


def test_spec_tensor_not_in_the_model_under_a_prefix(gpt2):
    text = edit("  ln_f.bias: resid\n", "  ln_f.bias: resid\n  ln_g.bias: resid\n", GPT2_SPEC)
    p = one_problem(text, gpt2)
    assert_at(p, text, "ln_g.bias", "tensors.ln_g.bias", "'transformer.ln_g.bias' is not in the model",
              "did you mean 'transformer.ln_f.bias'?")
    assert "transformer." in p.hint


def test_missing_templated_tensor_is_reported_once():
    text = edit("  h.${i}.ln_2.bias: resid\n", "  h.${i}.ln_2.bias: resid\n  h.${i}.ln_3.bias: resid\n", GPT2_SPEC)
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=16))
    p = one_problem(text, model)
    assert_at(p, text, "h.${i}.ln_3.bias", "tensors.h.${i}.ln_3.bias", "'transformer.h.0.ln_3.bias'", "1 more")


def test_wrong_prefix_is_one_summary(gpt2):
    text = edit("prefix: [transformer.]", "prefix: [transformr.]", GPT2_SPEC)
    p = one_problem(text, gpt2)
    assert_at(p, text, "prefix:", "prefix", "28 of the spec's 28 tensors are not in the model",
              "'transformr.wte.weight'", "did you mean 'transformer.wte.weight'?")
    assert "right spec" in p.hint and "'transformr.'" in p.hint


def test_tensor_both_bound_and_invariant():
    text = edit("invariant: [2.bias]", "invariant: [2.bias, 0.bias]")
    p = one_problem(text, mlp())
    assert_at(p, text, "0.bias]", "invariant.1", "tensor '0.bias' is both bound (at tensors.0.bias) and invariant")
    assert "remove one" in p.hint


def test_invariant_tensor_not_in_the_model():
    text = edit("invariant: [2.bias]", "invariant: [2.bias, 2.bais]")
    p = one_problem(text, mlp())
    assert_at(p, text, "2.bais", "invariant.1", "invariant tensor '2.bais' is not in the model", "did you mean '2.bias'?")


def test_tensor_bound_twice():
    text = edit("sites:\n", "repeat: {i: 1}\nsites:\n")
    text = edit("  0.bias: hidden\n", "  0.bias: hidden\n  ${i}.bias: hidden\n", text)
    p = one_problem(text, mlp())
    assert_at(p, text, "${i}.bias", "tensors.${i}.bias", "tensor '0.bias' is bound twice (also at tensors.0.bias)")


# --------------------------------------------------------------------------- templates


def test_undeclared_template_variable_in_a_key():
    text = edit("0.bias: hidden", '"${j}.bias": hidden')
    p = one_problem(text, mlp())
    assert_at(p, text, '"${j}.bias"', "tensors.${j}.bias", "template variable '${j}' is not declared in 'repeat'")
    assert "repeat:" in p.hint


def test_undeclared_template_variable_gets_a_suggestion():
    text = edit("sites:\n", "repeat: {i: 1}\nsites:\n")
    text = edit("0.bias: hidden", '"${ii}.bias": hidden', text)
    assert "did you mean 'i'?" in one_problem(text, mlp()).message


@pytest.mark.parametrize("old, new, needle, path", [
    ("invariant: [2.bias]", 'invariant: ["${j}.bias"]', '"${j}', "invariant.0"),
    ("invariant: [2.bias]", 'invariant: [2.bias]\ntied: [["${j}.weight", 0.weight]]', '["${j}', "tied.0"),
    ("invariant: [2.bias]", 'invariant: [2.bias]\ncanonicalize:\n  - untie: ["${j}.weight", 0.weight]', "untie",
     "canonicalize.0.untie"),
    ("0.bias: hidden", '0.bias: "hidden.${j}"', "0.bias", "tensors.0.bias"),
    ("{group: permutation, size: d}", '{group: permutation, size: d}\n  g: {group: invertible, size: 1, '
     'per: "hidden.${j}"}', "g:", "sites.g"),
])
def test_undeclared_template_variable_anywhere_is_one_problem(old, new, needle, path):
    text = edit(old, new)
    p = one_problem(text, mlp())  # no KeyError, and no follow-up coverage error for '2.bias'
    assert_at(p, text, needle, path, "template variable '${j}' is not declared in 'repeat'")


def test_template_variable_in_a_value_must_appear_in_the_key():
    text = edit("sites:\n", "repeat: {i: 1}\nsites:\n")
    text = edit("0.bias: hidden", '0.bias: "hidden.${i}"', text)
    p = one_problem(text, mlp())
    assert_at(p, text, "0.bias", "tensors.0.bias", "'${i}' is used in the value but not in the key '0.bias'")


def test_prefix_variable_only_in_heads():
    text = edit("0.bias: hidden", "${prefix}0.bias: hidden")
    p = one_problem(text, mlp())
    assert_at(p, text, "${prefix}0.bias", "tensors.${prefix}0.bias", "'${prefix}' is only for head entries")


def test_negative_repeat_range():
    text = MLP_SPEC + "repeat: {i: -1}\n"
    assert_at(one_problem(text, mlp()), text, "i: -1", "repeat.i", "range -1 is negative")


# --------------------------------------------------------------------------- ties and heads


def test_shared_weight_not_declared_tied():
    text = edit("tied:\n  - [emb.weight, out.weight]\n", "", TIED_SPEC.replace("KIND", "orthogonal"))
    p = one_problem(text, Tied())
    assert_at(p, text, "emb.weight", "tensors.emb.weight", "['emb.weight', 'out.weight']",
              "one shared parameter in the model but the spec does not say so")
    assert "'tied'" in p.hint and "untie" in p.hint


def test_gpt2_without_its_untie_step(gpt2):
    text = edit("      - untie: [lm_head.weight, transformer.wte.weight]\n", "", GPT2_SPEC)
    p = one_problem(text, gpt2)
    assert_at(p, text, 'wte.weight: "_ resid"', "tensors.wte.weight", "'transformer.wte.weight'", "'lm_head.weight'",
              "one shared parameter")


def test_declared_tie_that_is_not_a_tie():
    text = edit("invariant: [2.bias]", "invariant: [2.bias]\ntied:\n  - [0.bias, 2.bias]")
    p = one_problem(text, mlp())
    assert_at(p, text, "[0.bias, 2.bias]", "tied.0", "['0.bias', '2.bias'] are declared tied but are separate parameters")


def test_tied_name_not_in_the_model():
    text = edit("  - [emb.weight, out.weight]\n", "  - [emb.weight, out.weight]\n  - [emb.weight, out.wieght]\n",
                TIED_SPEC.replace("KIND", "orthogonal"))
    p = one_problem(text, Tied())
    assert_at(p, text, "[emb.weight, out.wieght]", "tied.1", "'out.wieght' is not in the model",
              "did you mean 'out.weight'?")


def test_tied_tensors_transforming_differently_on_an_invertible_site():
    text = TIED_SPEC.replace("KIND", "invertible")
    p = one_problem(text, Tied())
    assert_at(p, text, "out.weight:", "tensors.out.weight", "tied tensors 'emb.weight' ('_ resid')",
              "'out.weight' (\"_ resid'\") would transform differently")


def test_tied_tensors_with_different_sites():
    text = edit("sites:\n", "sites:\n  other: {group: permutation, size: 4}\n", TIED_SPEC.replace("KIND", "permutation"))
    text = edit('out.weight: "_ resid\'"', 'out.weight: "_ other"', text)
    p = one_problem(text, Tied())
    assert_at(p, text, "out.weight:", "tensors.out.weight", "would transform differently")


def test_tied_tensor_bound_and_its_twin_invariant():
    text = edit('  out.weight: "_ resid\'"\n', "", TIED_SPEC.replace("KIND", "orthogonal")) + "invariant: [out.weight]\n"
    p = one_problem(text, Tied())
    assert_at(p, text, "[emb.weight, out.weight]", "tied.0", "'emb.weight' ('_ resid')", "'out.weight' (invariant)",
              "would transform differently")


def test_head_partially_present(gpt2):
    text = edit('      lm_head.weight: "_ resid\'"\n', '      lm_head.weight: "_ resid\'"\n      lm_head.bias: _\n',
                GPT2_SPEC)
    p = one_problem(text, gpt2)
    assert_at(p, text, "lm:", "heads.lm", "head 'lm' is partly present", "'lm_head.weight'", "'lm_head.bias'")
    assert "all exist in the model or none" in p.hint


# --------------------------------------------------------------------------- canonicalize


def test_unknown_canonicalizer_suggests_one():
    text = MLP_SPEC + "canonicalize:\n  - untei: [0.weight, 2.weight]\n"
    p = one_problem(text, mlp())
    shown = assert_at(p, text, "untei", "canonicalize.0.untei", "unknown canonicalizer 'untei'", "did you mean 'untie'?")
    assert "?;" not in shown and "fold_layernorm" in p.hint


def test_unknown_canonicalizer_argument_suggests_one(gpt2):
    text = edit('readers: ["h.${i}.attn.c_attn.weight"]}', 'reader: ["h.${i}.attn.c_attn.weight"]}', GPT2_SPEC)
    p = one_problem(text, gpt2)  # once, though the step expands to two layers
    assert_at(p, text, "reader:", "canonicalize.0.fold_layernorm.reader", "fold_layernorm: unknown argument 'reader'",
              "did you mean 'readers'?")
    assert "norm, readers" in p.hint


def test_canonicalizer_arguments_of_the_wrong_shape():
    text = MLP_SPEC + "canonicalize:\n  - fold_layernorm: 3\n"
    p = one_problem(text, mlp())
    assert_at(p, text, "fold_layernorm", "canonicalize.0.fold_layernorm", "fold_layernorm takes a mapping of arguments",
              "got int 3")
    text = MLP_SPEC + "canonicalize:\n  - fold_layernorm: {norm: 0}\n"
    p = one_problem(text, mlp())
    assert_at(p, text, "fold_layernorm", "canonicalize.0.fold_layernorm", "readers")


def test_canonicalizer_naming_a_module_that_does_not_exist(gpt2):
    text = edit('norm: "h.${i}.ln_1"', 'norm: "h.${i}.ln1"', GPT2_SPEC)
    p = one_problem(text, gpt2)
    assert_at(p, text, "norm: \"h.${i}.ln1\"", "canonicalize.0.fold_layernorm.norm",
              "'transformer.h.0.ln1' (norm) is neither a tensor nor a module", "did you mean 'transformer.h.0.ln_1'?",
              "1 more")


def test_canonicalizer_naming_an_undeclared_site(gpt2):
    text = edit("      site: resid\n", "      site: resdi\n", GPT2_SPEC)
    p = one_problem(text, gpt2)
    assert_at(p, text, "site: resdi", "canonicalize.2.center_writers.site", "site 'resdi' is not declared",
              "did you mean 'resid'?")


def test_canonicalize_step_with_two_names():
    text = MLP_SPEC + "canonicalize:\n  - {untie: [0.weight, 2.weight], fold_layernorm: {}}\n"
    p = one_problem(text, mlp())
    assert_at(p, text, "{untie", "canonicalize.0", "a mapping with one key")


# --------------------------------------------------------------------------- dims


def test_dims_expression_error_names_the_dim(gpt2):
    text = edit("k: n_embd // n_head", "k: n_emb // n_head", GPT2_SPEC)
    p = one_problem(text, gpt2)
    assert_at(p, text, "k: n_emb", "dims.k", "unknown name 'n_emb'", "did you mean 'n_embd'?")


@pytest.mark.parametrize("expr, words", [
    ('"foo(1)"', "unknown function 'foo'"),
    ('"d.__class__"', "'__class__' is not allowed"),
    ('"(lambda: 4)()"', "only the functions"),
    ('"4 > 3"', "a comparison is not allowed"),
    ('"4.0"', "float constant 4.0"),
    ("\"-'a'\"", "non-integer"),
    ("\"shape('0.weight', 5)\"", "shape('0.weight', 5): the tensor has 2 axes (shape (4, 3))"),
    ("\"shape('0.weigth', 0)\"", "did you mean '0.weight'?"),
    ("\"len('0')\"", "has no length"),
    ("\"attr('0.__class__')\"", "special attributes"),
    ("\"attr('0.forward')\"", "not a value"),
    ("\"attr('0.out_feature')\"", "did you mean 'out_features'?"),
    ("\"attr('7.out_features')\"", "no module '7'"),
    ('"' + "+".join(["1"] * 5000) + '"', "more than the 1000 allowed"),
])
def test_dims_expression_errors(expr, words):
    text = edit("dims: {d: 4}", f"dims: {{a: 4, d: {expr}}}")
    p = one_problem(text, mlp())
    assert_at(p, text, "d: ", "dims.d", words)


def test_dims_may_not_be_negative():
    text = edit("dims: {d: 4}", 'dims: {d: "2 - 6"}')
    assert_at(one_problem(text, mlp()), text, "d: ", "dims.d", "is -4, a negative size")


def test_a_dim_that_reads_a_failed_dim_is_not_reported_again():
    # 'e' and the repeat range read 'd', whose tensor is missing: one problem (at d), not three
    text = edit("dims: {d: 4}", 'dims: {d: "shape(\'missing.weight\', 0)", e: "d // 2", f: 3}')
    p = one_problem(text, mlp())
    assert_at(p, text, "d: ", "dims.d", "no tensor 'missing.weight' in the model")
    # a dim that does not read 'd' is still evaluated and reported
    text = edit("dims: {d: 4}", 'dims: {d: "shape(\'missing.weight\', 0)", e: "d // 2", f: "nope"}')
    assert [".".join(map(str, x.path)) for x in problems(text, mlp())] == ["dims.d", "dims.f"]


# --------------------------------------------------------------------------- never a raw exception


BROKEN = [
    edit("invariant: [2.bias]", 'invariant: ["${j}.bias"]'),
    edit("invariant: [2.bias]", 'invariant: [2.bias]\ntied: [["${j}.weight", 0.weight]]'),
    edit("invariant: [2.bias]", 'invariant: [2.bias]\ncanonicalize:\n  - untie: ["${j}.weight", 0.weight]'),
    edit("invariant: [2.bias]", "invariant: [2.bias]\ncanonicalize:\n  - untie: 3"),
    edit("invariant: [2.bias]", "invariant: [2.bias]\ncanonicalize:\n  - fold_layernorm: [a, b]"),
    edit("invariant: [2.bias]", "invariant: [2.bias]\ntied: [[2.bias]]"),
    edit("dims: {d: 4}", "dims: {d: \"-'a'\"}"),
    edit("dims: {d: 4}", 'dims: {d: "' + "(" * 300 + "1" + ")" * 300 + '"}'),
    edit("dims: {d: 4}", "dims: {d: \"shape(3, 'x')\"}"),
    edit("dims: {d: 4}", "dims: {d: \"shape('0.weight', 'x')\"}"),
    edit("dims: {d: 4}", "dims: {d: \"attr(3)\"}"),
    edit("dims: {d: 4}", "dims: {d: \"len(3)\"}"),
    edit("dims: {d: 4}", 'dims: {d: "max()"}'),
    edit("dims: {d: 4}", "dims: {d: \"min('a', 3)\"}"),
    edit("dims: {d: 4}", 'dims: {d: "attr(\'\')"}'),
    edit("dims: {d: 4}", "dims: {d: 4, 1: 3}"),
    edit("sites:\n", "prefix: []\nsites:\n"),
    edit("sites:\n", "repeat: {i: \"'a'\"}\nsites:\n"),
    edit("tensors:\n", "outputs: {y: \"(_ _)\"}\ntensors:\n"),
    edit("tensors:\n", "heads: {h: {tensors: {'${prefix}2.bias': _}, tied: [[a]]}}\ntensors:\n"),
    edit("tensors:\n", "canonicalize: [null]\ntensors:\n"),
    "symdsl: 1\nname: x\ntensors: null\n",
    "symdsl: 1\nname: [x]\n",
    "symdsl: 1\nname: x\n? [a]\n: 1\n",
    ":\n",
]


@pytest.mark.parametrize("text", BROKEN, ids=range(len(BROKEN)))
def test_broken_specs_raise_spec_errors_only(text):
    with pytest.raises(SymdslError) as info:
        resolve(load_spec_text(text, FILE), mlp(), registries=REGISTRIES)
    assert isinstance(info.value, SpecError)
    for p in info.value.problems:
        assert p.file == FILE and p.message
        str(p)


def test_resolve_usage_errors():
    spec = load_spec_text(MLP_SPEC)
    with pytest.raises(UsageError, match="needs a model or a state dict"):
        resolve(spec, registries=REGISTRIES)
    with pytest.raises(UsageError, match="torch.nn.Module"):
        resolve(spec, "not a model", registries=REGISTRIES)  # type: ignore[arg-type]


def test_resolve_on_a_state_dict_and_config():
    spec = load_spec_text(MLP_SPEC.replace("dims: {d: 4}", "dims: {d: width}"))
    r = resolve(spec, state=mlp().state_dict(), config={"width": 4}, registries=REGISTRIES)
    assert r.sites["hidden"].size == 4


def test_resolve_on_a_state_dict_cannot_read_modules():
    text = MLP_SPEC.replace("dims: {d: 4}", 'dims: {d: attr("0.out_features")}')
    with pytest.raises(SpecError, match="needs the model itself"):
        resolve(load_spec_text(text), state=mlp().state_dict(), registries=REGISTRIES)


def test_find_spec_usage_errors(tmp_path):
    from symdsl import find_spec

    with pytest.raises(UsageError, match="no spec named 'hf-gtp2'; did you mean 'hf-gpt2'?"):
        find_spec("hf-gtp2")
    with pytest.raises(UsageError, match="does not exist"):
        find_spec(tmp_path / "missing.yaml")


def test_number_keys_must_be_quoted():
    text = edit("dims: {d: 4}", "dims: {d: 4, 1: 3}")
    p = one_problem(text, mlp())
    assert_at(p, text, "1: 3", "dims.1", "keys here must be strings, got int 1")
