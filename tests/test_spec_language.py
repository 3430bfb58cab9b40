"""The spec language itself: axis patterns, dimension expressions, templates, prefixes and heads,
`symdsl schema`, and the shipped specs. (What goes wrong, and how it is reported: test_spec_errors.py.)"""
from __future__ import annotations

import builtins
import json
from pathlib import Path

import jsonschema
import pytest
import torch
import yaml
from torch import nn

from toy_models import ATTENTION_SPEC, MLP_SPEC, ToyAttention, mlp

from symdsl.errors import SpecError
from symdsl.spec import json_schema, load_spec, load_spec_text, resolve
from symdsl.spec.expr import ExprError, evaluate
from symdsl.spec.pattern import Factor, PatternError, parse_pattern
from symdsl.spec.template import combos, expand_list, substitute, substitute_all, variables
from conftest import REGISTRIES

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = {"hf-gpt2": "hf-gpt2.yaml", "timm-vit": "timm-vit.yaml", "hf-bert": "hf-bert.yaml"}
PAPER_ROUTE = {"hf-gpt2-rmsnorm": "hf-gpt2-rmsnorm.yaml", "timm-vit-rmsnorm": "timm-vit-rmsnorm.yaml",
               "hf-gpt2-backbone": "hf-gpt2-backbone.yaml", "hf-gpt2-circuits": "hf-gpt2-circuits.yaml",
               "timm-vit-circuits": "timm-vit-circuits.yaml"}   # variants: paper route, bare GPT2Model
DECODERS = {"hf-llama": "hf-llama.yaml", "hf-qwen2": "hf-qwen2.yaml",                          # checked in tests/test_llama.py
            "hf-gpt-neox": "hf-gpt-neox.yaml", "hf-gptj": "hf-gptj.yaml", "hf-phi3": "hf-phi3.yaml",  # test_neox/gptj/phi3.py
            "hf-mixtral": "hf-mixtral.yaml",                                                    # tests/test_mixtral.py
            "hf-qwen3": "hf-qwen3.yaml", "hf-gemma": "hf-gemma.yaml", "hf-gemma2": "hf-gemma2.yaml",  # test_qwen3/gemma.py
            "hf-opt": "hf-opt.yaml", "hf-opt-postln": "hf-opt-postln.yaml"}                        # tests/test_opt.py
DECODERS.update({f"{name}-backbone": f"{name}-backbone.yaml" for name in                     # tests/test_decoder_backbones.py
                 ["hf-llama", "hf-qwen2", "hf-qwen3", "hf-gemma", "hf-gemma2", "hf-phi3", "hf-gpt-neox", "hf-gptj",
                  "hf-opt", "hf-opt-postln", "hf-mixtral"]})
OTHERS = {name: f"{name}.yaml" for name in ["hf-t5", "hf-clip", "hf-clip-text", "hf-clip-vision"]}  # test_t5/clip.py
ENCODERS = {"hf-roberta": "hf-roberta.yaml", "hf-distilbert": "hf-distilbert.yaml",         # tests/test_encoders.py
            "hf-vit": "hf-vit.yaml", "hf-vit-backbone": "hf-vit-backbone.yaml",
            "timm-vit-gap": "timm-vit-gap.yaml",                                                 # test_timm_vit_variants.py
            "timm-vit-swiglu": "timm-vit-swiglu.yaml",                                           # test_timm_vit_swiglu.py
            "timm-eva02": "timm-eva02.yaml"}                                                     # test_timm_eva02.py


# --------------------------------------------------------------------------- models


def gpt2_config(**extra):
    from transformers import GPT2Config

    return GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=16, bos_token_id=0,
                      eos_token_id=0, **extra)


@pytest.fixture(scope="module")
def gpt2():
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(gpt2_config()).eval()


@pytest.fixture(scope="module")
def gpt2_spec_text() -> str:
    return (ROOT / "specs" / "hf-gpt2.yaml").read_text()


# --------------------------------------------------------------------------- axis patterns


def factors(axis):
    return [[str(f) for f in part] for part in axis.parts]


def test_pattern_simple_axes_and_unbound_axes():
    axes = parse_pattern("resid _")
    assert len(axes) == 2
    assert axes[0].parts == ((Factor("resid"),),)
    assert axes[1].parts == ((Factor(None),),)
    assert not axes[0].is_split


def test_pattern_dual_marks_the_contracting_side():
    (axis,) = parse_pattern("resid'")
    (f,) = axis.parts[0]
    assert f.name == "resid" and f.dual is True
    assert parse_pattern("resid")[0].parts[0][0].dual is False


def test_pattern_composite_axis_is_one_axis_with_row_major_factors():
    axes = parse_pattern("(heads qk') resid")
    assert len(axes) == 2
    assert factors(axes[0]) == [["heads", "qk'"]]
    assert [f.dual for f in axes[0].parts[0]] == [False, True]


def test_pattern_split_axis_has_one_part_per_chunk():
    (axis,) = parse_pattern("[heads qk | heads qk' | heads ov]")
    assert axis.is_split
    assert factors(axis) == [["heads", "qk"], ["heads", "qk'"], ["heads", "ov"]]
    # a parenthesised composite inside a part means the same as bare factors
    assert factors(parse_pattern("[(heads qk) | ov]")[0]) == [["heads", "qk"], ["ov"]]


def test_pattern_integers_underscore_and_dotted_names():
    axes = parse_pattern("_ 3 (2 _) heads.0")
    assert axes[0].parts[0][0] == Factor(None)
    assert axes[1].parts[0][0] == Factor(None, literal=3)
    assert axes[2].parts[0] == (Factor(None, literal=2), Factor(None))
    assert axes[3].parts[0][0].name == "heads.0"


@pytest.mark.parametrize("text", ["resid", "resid'", "(heads qk')", "[heads qk | heads qk' | heads ov]",
                                  "_ 3 (2 _)", "resid' [a | b c]"])
def test_pattern_prints_back_to_an_equivalent_pattern(text):
    axes = parse_pattern(text)
    assert parse_pattern(" ".join(str(a) for a in axes)) == axes


def test_pattern_ignores_surrounding_whitespace():
    assert parse_pattern("  resid   _ ") == parse_pattern("resid _")


@pytest.mark.parametrize("text, column, words", [
    ("", 1, "empty pattern"),
    ("(hidden", 7, "missing ')'"),
    ("hidden )", 8, "unexpected ')'"),
    ("hid$den", 4, "unexpected character '$'"),
    ("a  $", 4, "unexpected character '$'"),          # the column of '$', not of the blanks before it
    ("()", 2, "empty group"),
    ("[a]", 3, "at least two parts"),
    ("[a |]", 5, "empty part"),
    ("((a))", 2, "unexpected '('"),
    ("[a | [b | c]]", 6, "unexpected '['"),
    ("(a | b)", 4, "unexpected '|'"),
    ("(a]", 3, "mismatched ']'"),
    ("_'", 2, "cannot be dual"),
    ("a''", 3, "unexpected character"),
    ("1a", 2, "separate factors with a space"),      # not two axes '1' and 'a'
    ("qk'x", 4, "separate factors with a space"),
    ("(0 a)", 2, "size 0"),
    ("heads.${i}", 7, "'$'"),
])
def test_pattern_malformed_inputs_report_the_column(text, column, words):
    with pytest.raises(PatternError) as info:
        parse_pattern(text)
    assert info.value.column == column, str(info.value)
    assert words in str(info.value)


# --------------------------------------------------------------------------- dimension expressions


@pytest.mark.parametrize("text, value", [
    (12, 12),
    ("7", 7),
    ("n_embd // n_head", 8),
    ("n_embd * 3 + 1", 97),
    ("(n_embd + 1) * 2 - 3 % 2", 65),
    ("-n_head + 10", 6),
    ("n_inner or 4 * n_embd", 128),   # None falls through
    ("zero or n_head", 4),           # so does 0
    ("n_head or 99", 4),
    ("min(n_embd, n_head, 9)", 4),
    ("max(n_embd // n_head, 3)", 8),
    ("vision.width // vision.heads", 16),   # nested config values
    ("vision.deep.n", 5),
])
def test_expressions_evaluate(text, value):
    names = {"n_embd": 32, "n_head": 4, "n_inner": None, "zero": 0,
             "vision": {"width": 64, "heads": 4, "deep": {"n": 5}}}
    assert evaluate(text, names) == value


@pytest.mark.parametrize("text, words", [
    ("foo(3)", "unknown function 'foo'"),
    ("__import__('os')", "unknown function '__import__'"),
    ("__import__('os').system('true')", "only the functions"),
    ("open('/etc/passwd')", "unknown function 'open'"),
    ("n.__class__", "'__class__' is not allowed"),
    ("cfg.__dict__", "'__dict__' is not allowed"),
    ("cfg.items", "'items' not found"),
    ("n.real", "cannot read '.real'"),
    ("(lambda: 4)()", "only the functions"),
    ("lambda: 4", "lambda is not allowed"),
    ("n > 3", "a comparison is not allowed"),
    ("n if n else 2", "if/else is not allowed"),
    ("n and 2", "'and' is not allowed"),
    ("4.0", "float constant 4.0 is not allowed"),
    ("n * 0.5", "float constant 0.5"),
    ("n / 2", "'/' is not allowed"),
    ("n ** 2", "'**' is not allowed"),
    ("[n][0]", "not allowed"),
    ("'a'.upper()", "only the functions"),
    ("min(n, key=3)", "keyword arguments"),
    ("-'a'", "non-integer"),
    ("n + 'a'", "non-integer"),
    ("flag + 1", "non-integer"),          # booleans are not sizes
    ("'abc'", "not an integer"),
    ("flag", "not an integer"),
    ("n // 0", "division by zero"),
    ("missing", "unknown name 'missing'"),
    ("n +", "cannot parse"),
    ("", "cannot parse"),
    ("+".join(["1"] * 5000), "characters, more than the 1000 allowed"),
])
def test_expressions_reject_everything_else(text, words):
    names = {"n": 4, "flag": True, "cfg": {"a": 1}}
    with pytest.raises(ExprError) as info:
        evaluate(text, names)
    assert words in str(info.value)
    assert len(str(info.value)) < 400  # long expressions are shortened in messages


def test_expressions_reject_non_integers_given_directly():
    for value in (True, 4.0, None, [4]):
        with pytest.raises(ExprError):
            evaluate(value, {})


def test_unknown_names_get_a_suggestion():
    with pytest.raises(ExprError, match="did you mean 'n_embd'"):
        evaluate("n_emb // 2", {"n_embd": 32})


def test_expressions_never_call_eval_or_exec(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("eval/exec must not be used")

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    assert evaluate("max(a, 2) * 3 // b or 1", {"a": 5, "b": 3}) == 5


def test_expression_functions_read_the_model_through_resolve(gpt2, gpt2_spec_text):
    text = gpt2_spec_text.replace("  L: n_layer\n", "  L: n_layer\n"
                                  "  e: shape(\"wte.weight\", 1)\n"        # under the prefix 'transformer.'
                                  "  v: shape(\"wte.weight\", -2)\n"
                                  "  nh: attr(\"h.0.attn.num_heads\")\n"
                                  "  nl: len(\"h\") + 0\n"
                                  "  lab: label2id.LABEL_1 + 10\n"         # a nested config value
                                  "  hd: d // h\n")
    r = resolve(load_spec_text(text), gpt2, registries=REGISTRIES)
    assert r.dims["e"] == 32 and r.dims["v"] == 64
    assert r.dims["nh"] == 4 and r.dims["nl"] == 2
    assert r.dims["lab"] == 11
    assert r.dims["hd"] == r.dims["k"] == 8
    assert r.dims["f"] == 128  # n_inner is None in the config: 'n_inner or 4 * n_embd'


def test_nested_config_of_a_plain_module():
    net = mlp()
    net.symdsl_config = {"enc": {"width": 4}}
    r = resolve(load_spec_text(MLP_SPEC.replace("dims: {d: 4}", "dims: {d: enc.width}")), net, registries=REGISTRIES)
    assert r.dims["d"] == 4 and r.sites["hidden"].size == 4


def test_dims_are_evaluated_in_order_and_may_use_earlier_dims():
    text = MLP_SPEC.replace("dims: {d: 4}", "dims: {a: 2, d: a * 2, e: d + a}")
    r = resolve(load_spec_text(text), mlp(), registries=REGISTRIES)
    assert r.dims == {"a": 2, "d": 4, "e": 6}


# --------------------------------------------------------------------------- templates


def test_template_helpers():
    assert variables("h.${i}.mlp.${j}.${i}") == ["i", "j"]
    assert substitute("h.${i}.x.${j}", {"i": 3}) == "h.3.x.${j}"
    assert list(combos(["i", "j"], {"i": 2, "j": 3})) == [
        {"i": 0, "j": 0}, {"i": 0, "j": 1}, {"i": 0, "j": 2},
        {"i": 1, "j": 0}, {"i": 1, "j": 1}, {"i": 1, "j": 2}]
    assert list(combos([], {"i": 2})) == [{}]
    assert list(combos(["i"], {"i": 0})) == []
    assert substitute_all({"k.${i}": ["v.${i}", 3]}, {"i": 1}) == {"k.1": ["v.1", 3]}
    assert substitute("${prefix}pooler", {"prefix": "bert."}) == "bert.pooler"


def test_template_lists_strings_and_tie_groups():
    ranges = {"i": 2, "j": 2}
    assert expand_list(["a.${i}", "b"], ranges) == ["a.0", "a.1", "b"]
    assert expand_list(["a.${i}.${j}"], ranges) == ["a.0.0", "a.0.1", "a.1.0", "a.1.1"]
    # a tie group is expanded as a whole: one group per value of its variables
    assert expand_list([["a.${i}", "b.${i}"]], ranges) == [["a.0", "b.0"], ["a.1", "b.1"]]
    assert expand_list([["a.${i}", "b.${j}"]], ranges) == [["a.0", "b.0"], ["a.0", "b.1"],
                                                          ["a.1", "b.0"], ["a.1", "b.1"]]


def test_template_canonicalize_steps():
    ranges = {"i": 2}
    # variables in a scalar field: one step per value; lists inside follow that value
    fold = expand_list([{"norm": "n.${i}", "readers": ["r.${i}", "s"]}], ranges)
    assert fold == [{"norm": "n.0", "readers": ["r.0", "s"]}, {"norm": "n.1", "readers": ["r.1", "s"]}]
    # variables only in lists: one step whose lists are expanded
    center = expand_list([{"site": "resid", "writers": ["w", "x.${i}"]}], ranges)
    assert center == [{"site": "resid", "writers": ["w", "x.0", "x.1"]}]


class Grid(nn.Module):
    """blocks.i.units.j: a grid of 2 x 3 linear layers."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Module() for _ in range(2))
        for block in self.blocks:
            block.units = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))


GRID_SPEC = """\
symdsl: 1
name: grid
dims: {L: len("blocks"), U: len("blocks.0.units")}
repeat: {i: L, j: U}
sites:
  u.${i}.${j}: {group: permutation, size: 4}
tensors:
  blocks.${i}.units.${j}.weight: "u.${i}.${j} _"
  blocks.${i}.units.${j}.bias: u.${i}.${j}
"""


def test_multi_variable_templates_expand_keys_and_values():
    r = resolve(load_spec_text(GRID_SPEC), Grid(), registries=REGISTRIES)
    assert sorted(r.sites) == sorted(f"u.{i}.{j}" for i in range(2) for j in range(3))
    assert r.tensors["blocks.1.units.2.weight"].sites() == {"u.1.2"}
    assert r.tensors["blocks.0.units.1.bias"].sites() == {"u.0.1"}
    assert r.tensors["blocks.1.units.2.weight"].origin == ("tensors", "blocks.${i}.units.${j}.weight")


class Uneven(nn.Module):
    """Layers of different widths (a pruned MLP)."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(3, 5), nn.Linear(3, 7)])


def test_site_sizes_may_use_the_template_variables_of_their_key():
    text = """\
symdsl: 1
name: uneven
repeat: {i: len("blocks")}
sites:
  h.${i}: {group: permutation, size: "shape('blocks.${i}.weight', 0)"}
tensors:
  blocks.${i}.weight: "h.${i} _"
  blocks.${i}.bias: h.${i}
"""
    r = resolve(load_spec_text(text), Uneven(), registries=REGISTRIES)
    assert r.sites["h.0"].size == 5 and r.sites["h.1"].size == 7


class TiedBlocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Module() for _ in range(2))
        for block in self.blocks:
            block.a = nn.Linear(4, 4, bias=False)
            block.b = nn.Linear(4, 4, bias=False)
            block.b.weight = block.a.weight


def test_tie_groups_expand_per_layer():
    text = """\
symdsl: 1
name: tied-blocks
repeat: {i: 2}
sites:
  h.${i}: {group: permutation, size: 4}
tensors:
  blocks.${i}.a.weight: "h.${i} _"
  blocks.${i}.b.weight: "h.${i} _"
tied:
  - ["blocks.${i}.a.weight", "blocks.${i}.b.weight"]
"""
    r = resolve(load_spec_text(text), TiedBlocks(), registries=REGISTRIES)
    assert r.tied == [["blocks.0.a.weight", "blocks.0.b.weight"], ["blocks.1.a.weight", "blocks.1.b.weight"]]


def test_canonicalize_steps_expand_and_get_the_prefix(gpt2):
    r = resolve(load_spec_text((ROOT / "specs" / "hf-gpt2.yaml").read_text()), gpt2, registries=REGISTRIES)
    names = [s.name for s in r.canonicalize]
    # the head's steps first (untie before anything folds into lm_head), then the backbone's
    assert names == ["untie", "fold_layernorm", "fold_layernorm", "fold_layernorm", "fold_layernorm",
                     "fold_layernorm", "center_writers"]
    assert r.canonicalize[0].args.names == ["lm_head.weight", "transformer.wte.weight"]
    assert r.canonicalize[1].args.norm == "transformer.ln_f"
    folds = [(s.args.norm, s.args.readers) for s in r.canonicalize[2:6]]
    assert folds == [("transformer.h.0.ln_1", ["transformer.h.0.attn.c_attn.weight"]),
                     ("transformer.h.1.ln_1", ["transformer.h.1.attn.c_attn.weight"]),
                     ("transformer.h.0.ln_2", ["transformer.h.0.mlp.c_fc.weight"]),
                     ("transformer.h.1.ln_2", ["transformer.h.1.mlp.c_fc.weight"])]
    writers = r.canonicalize[-1].args.writers
    assert len(writers) == 2 + 4 * 2
    assert writers[:2] == ["transformer.wte.weight", "transformer.wpe.weight"]
    assert "transformer.h.1.mlp.c_proj.bias" in writers
    assert r.canonicalize[-1].origin == ("canonicalize", 2, "center_writers")


# --------------------------------------------------------------------------- binding


def test_composite_and_split_axes_bind_with_sizes():
    r = resolve(load_spec_text(ATTENTION_SPEC), ToyAttention(), registries=REGISTRIES)
    qkv = r.tensors["qkv.weight"]
    (out_axis, in_axis) = qkv.axes
    assert out_axis.size == 24 and in_axis.size == 8
    assert [[(f.site, f.size, f.dual) for f in part] for part in out_axis.parts] == [
        [("heads", 2, False), ("qk", 4, False)],
        [("heads", 2, False), ("qk", 4, True)],
        [("heads", 2, False), ("ov", 4, False)]]
    assert in_axis.parts == ((in_axis.parts[0][0],),) and in_axis.parts[0][0].dual
    assert r.sites["qk"].per == "heads" and r.sites["qk"].per_size == 2 and r.sites["qk"].batch == (2,)
    assert r.children("heads") == ["qk", "ov"]
    assert sorted(r.site_tensors("ov")) == ["proj.weight", "qkv.bias", "qkv.weight"]
    assert r.sites["resid"].options == {"preserve": "ones"}


def test_unbound_factor_size_is_inferred_from_the_tensor():
    text = MLP_SPEC.replace('0.weight: "hidden _"', '0.weight: "hidden (_ 1)"')
    r = resolve(load_spec_text(text), mlp(), registries=REGISTRIES)
    assert [f.size for f in r.tensors["0.weight"].axes[1].parts[0]] == [3, 1]


def test_outputs_bind_without_a_shape():
    r = resolve(load_spec_text(MLP_SPEC + 'outputs: {hidden_states: "_ _ hidden"}\n'), mlp(), registries=REGISTRIES)
    out = r.outputs["hidden_states"]
    assert len(out.axes) == 3 and out.sites() == {"hidden"}


# --------------------------------------------------------------------------- prefixes and heads


class Backbone(nn.Module):
    def __init__(self, pool: bool):
        super().__init__()
        self.inp = nn.Linear(3, 4)
        self.out = nn.Linear(4, 4)
        if pool:
            self.pool = nn.Linear(4, 4)


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = Backbone(pool=True)
        self.head = nn.Linear(4, 2)


HEADS_SPEC = """\
symdsl: 1
name: toy-heads
prefix: [body., ""]
sites:
  hidden: {group: permutation, size: 4}
  feat:   {group: permutation, size: 4}
tensors:
  inp.weight: "hidden _"
  inp.bias: hidden
  out.weight: "feat hidden'"
  out.bias: feat
heads:
  pooler:
    sites:
      pool: {group: permutation, size: 4}
    tensors:
      ${prefix}pool.weight: "pool feat'"
      ${prefix}pool.bias: pool
  cls:
    tensors:
      head.weight: "_ pool'"
    invariant: [head.bias]
"""


@pytest.mark.parametrize("model, prefix, heads", [
    (Backbone(pool=False), "", []),
    (Backbone(pool=True), "", ["pooler"]),
    (Classifier(), "body.", ["pooler", "cls"]),
])
def test_prefix_alternatives_and_heads(model, prefix, heads):
    r = resolve(load_spec_text(HEADS_SPEC), model, registries=REGISTRIES)
    assert r.prefix == prefix
    assert r.heads == heads
    assert set(r.tensors) | r.invariant == set(model.state_dict())
    assert (prefix + "pool.weight" in r.tensors) == ("pooler" in heads)
    assert ("pool" in r.sites) == ("pooler" in heads)


def test_head_entries_keep_their_position_in_the_file():
    r = resolve(load_spec_text(HEADS_SPEC), Classifier(), registries=REGISTRIES)
    assert r.tensors["body.pool.weight"].origin == ("heads", "pooler", "tensors", "${prefix}pool.weight")
    bad = HEADS_SPEC.replace('${prefix}pool.weight: "pool feat\'"', '${prefix}pool.weight: "pool fet\'"')
    with pytest.raises(SpecError) as info:
        resolve(load_spec_text(bad, "heads.yaml"), Classifier(), registries=REGISTRIES)
    (problem,) = info.value.problems
    line = bad.splitlines().index("      ${prefix}pool.weight: \"pool fet'\"") + 1
    assert (problem.line, problem.column) == (line, 7)
    assert "did you mean 'feat'" in problem.message


def test_gpt2_backbone_lives_under_transformer(gpt2, gpt2_spec_text):
    r = resolve(load_spec_text(gpt2_spec_text), gpt2, registries=REGISTRIES)
    assert r.prefix == "transformer."
    assert r.heads == ["lm"]
    assert "transformer.h.1.attn.c_attn.weight" in r.tensors and "lm_head.weight" in r.tensors
    assert all(n.startswith("transformer.") for n in r.tensors if n != "lm_head.weight")
    assert set(r.tensors) | r.invariant == set(gpt2.state_dict())


def test_gpt2_prefix_alternatives_pick_the_one_that_fits(gpt2, gpt2_spec_text):
    from transformers import GPT2Model

    either = gpt2_spec_text.replace("prefix: [transformer.]", 'prefix: ["", transformer.]')
    assert resolve(load_spec_text(either), gpt2, registries=REGISTRIES).prefix == "transformer."
    bare = GPT2Model(gpt2_config())
    r = resolve(load_spec_text(either), bare, registries=REGISTRIES)
    assert r.prefix == "" and r.heads == []
    assert "h.0.attn.c_attn.weight" in r.tensors


# --------------------------------------------------------------------------- symdsl schema


def shipped_files() -> list[Path]:
    return sorted((ROOT / "specs").glob("*.yaml"))


def test_json_schema_is_valid_draft_2020_12():
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    json.dumps(schema)  # plain JSON


@pytest.mark.parametrize("path", shipped_files(), ids=lambda p: p.name)
def test_json_schema_accepts_every_shipped_spec(path):
    validator = jsonschema.Draft202012Validator(json_schema())
    errors = list(validator.iter_errors(yaml.safe_load(path.read_text())))
    assert errors == []


@pytest.mark.parametrize("edit", [
    lambda d: d.update(tensorz={}),                                    # unknown top-level key
    lambda d: d["sites"]["resid"].update(grup="orthogonal"),           # unknown nested key
    lambda d: d["sites"]["resid"].update(size=4.5),                    # not an integer or expression
    lambda d: d.update(symdsl=2),                                      # wrong language version
    lambda d: d.pop("name"),                                           # required key
])
def test_json_schema_rejects_what_load_rejects(edit):
    data = yaml.safe_load((ROOT / "specs" / "hf-gpt2.yaml").read_text())
    edit(data)
    validator = jsonschema.Draft202012Validator(json_schema())
    assert list(validator.iter_errors(data)), "the JSON schema accepted an invalid spec"
    with pytest.raises(SpecError):
        load_spec_text(yaml.safe_dump(data))


# --------------------------------------------------------------------------- shipped specs


def test_registry_finds_exactly_the_shipped_specs(monkeypatch):
    from symdsl.spec import registry

    entries = [e for e in registry.list_specs(REGISTRIES) if e.origin == "symdsl-builtins"]  # the built-in plugin's folder
    assert sorted(e.name for e in entries) == sorted({**SHIPPED, **PAPER_ROUTE, **DECODERS, **OTHERS, **ENCODERS})
    for e in entries:
        assert e.file.name == {**SHIPPED, **PAPER_ROUTE, **DECODERS, **OTHERS, **ENCODERS}[e.name]
    assert registry.find_spec("hf-gpt2", REGISTRIES).name == "hf-gpt2"


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_spec_loads_and_resolves_on_its_example(name):
    from symdsl.models import build_example

    spec = load_spec(ROOT / "specs" / SHIPPED[name])
    assert spec.name == name
    model = build_example(spec)
    r = resolve(spec, model, registries=REGISTRIES)
    state = model.state_dict()
    # every tensor is covered exactly once, every site is used, every tie is declared
    assert set(r.tensors) | r.invariant == set(state)
    assert not set(r.tensors) & r.invariant
    assert all(r.site_tensors(s) for s in r.sites)
    layers = r.dims["L"]
    assert layers == 2
    assert {"resid", "heads.0", "heads.1", "qk.1", "ov.1", "mlp.1"} <= set(r.sites)
    assert r.sites["qk.0"].per == "heads.0" and r.sites["qk.0"].per_size == r.dims["h"]
    for tensor, binding in r.tensors.items():
        assert tuple(a.size for a in binding.axes) == tuple(state[tensor].shape), tensor


def test_models_without_data_resolve_and_keep_their_real_ties():
    from symdsl.spec import detect_ties

    with torch.device("meta"):
        grid, tied = Grid(), TiedBlocks()
    # same-shaped meta tensors all sit at address 0: they are not ties
    assert detect_ties(grid.state_dict(keep_vars=True)) == []
    assert detect_ties(tied.state_dict(keep_vars=True)) == [["blocks.0.a.weight", "blocks.0.b.weight"],
                                                            ["blocks.1.a.weight", "blocks.1.b.weight"]]
    assert len(resolve(load_spec_text(GRID_SPEC), grid, registries=REGISTRIES).sites) == 6


@pytest.mark.parametrize("name", sorted({**PAPER_ROUTE, **DECODERS, **OTHERS, **ENCODERS}))
def test_every_other_shipped_spec_builds_its_example_and_covers_it(name):
    # `symdsl check NAME` without --model rebuilds this example: it must build and bind fully
    from symdsl.models import build_example

    spec = load_spec(ROOT / "specs" / {**PAPER_ROUTE, **DECODERS, **OTHERS, **ENCODERS}[name])
    model = build_example(spec)
    r = resolve(spec, model, registries=REGISTRIES)          # refuses unbound tensors and undeclared ties
    assert r.sites and all(r.site_tensors(s) for s in r.sites)
