"""Graph capture: both backends, the normalised op contract, tied weights, errors."""
from __future__ import annotations

import collections
import importlib
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from symdsl.errors import SymdslError, UsageError
from symdsl.graph import BUILTIN_BACKENDS, CapturedGraph, OpNode, Ref, capture, check_graph, normalize_op
from symdsl.registry import Registries
from symdsl.models.build import quiet_transformers

# the module, not the function of the same name that symdsl.graph exports
capture_module = importlib.import_module("symdsl.graph.capture")
INTERESTING = {"linear", "layer_norm", "gelu", "scaled_dot_product_attention"}
SHAPELESS = {"output", "assert"}


# -- tiny models --------------------------------------------------------------------------
class Block(nn.Module):
    """A pre-norm transformer block written with plain torch modules."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.act, self.fc2 = nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim)
        self.drop = nn.Dropout(0.1)

    def forward(self, x):
        b, n, d = x.shape
        qkv = self.qkv(self.ln1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, n, d)))
        return x + self.fc2(self.act(self.fc1(self.ln2(x))))


class TinyLM(nn.Module):
    """Embedding, one block, and an output head tied to the embedding."""

    def __init__(self, vocab: int = 32, dim: int = 16) -> None:
        super().__init__()
        self.emb, self.block, self.ln_f = nn.Embedding(vocab, dim), Block(dim), nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        return self.head(self.ln_f(self.block(self.emb(ids)))[:, -1])


class Indexing(nn.Module):
    def forward(self, x):
        return x[:, 1:, None] * 2, x[..., :2].reshape(2, -1), x[0]


class Mutating(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 4))

    def forward(self, x):
        h = x @ self.w.T
        h.add_(1.0)  # fx records no mutation: later reads of h must still see this add
        return h * 2


def _gate(x):
    # data-dependent branch: torch.export cannot trace it, fx keeps the call as one node
    return x if x.sum() > 0 else -x


torch.fx.wrap("_gate")


class Gated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(_gate(x))


@pytest.fixture(scope="module")
def gpt2():
    import transformers

    torch.manual_seed(0)
    with quiet_transformers():
        config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=16,
                                         bos_token_id=0, eos_token_id=0)
        model = transformers.GPT2LMHeadModel(config).eval()
    return model, {"input_ids": torch.randint(0, 64, (2, 8))}


@pytest.fixture(scope="module")
def vit():
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(img_size=8, patch_size=2, in_chans=1, num_classes=10, embed_dim=32, depth=2,
                              num_heads=4, mlp_ratio=2.0).eval()
    return model, {"x": torch.randn(2, 1, 8, 8)}


@pytest.fixture(scope="module")
def bert():
    import transformers

    torch.manual_seed(0)
    with quiet_transformers():
        config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=64, vocab_size=64, max_position_embeddings=16)
        model = transformers.BertForMaskedLM(config).eval()
    return model, {"input_ids": torch.randint(0, 64, (2, 8))}


@pytest.fixture(scope="module")
def tiny_lm():
    torch.manual_seed(0)
    return TinyLM().eval(), {"ids": torch.randint(0, 32, (2, 8))}


@pytest.fixture(scope="module")
def captured(gpt2, vit, bert, tiny_lm):
    """Every (model, backend) capture the tests look at, made once."""
    return {
        ("gpt2", "export"): capture(*gpt2),
        ("vit", "export"): capture(*vit),
        ("bert", "export"): capture(*bert),
        ("tiny_lm", "export"): capture(*tiny_lm),
        ("vit", "fx"): capture(*vit, backend="fx"),
        ("tiny_lm", "fx"): capture(*tiny_lm, backend="fx"),
    }


def _models(gpt2, vit, bert, tiny_lm):
    return {"gpt2": gpt2[0], "vit": vit[0], "bert": bert[0], "tiny_lm": tiny_lm[0]}


# -- the output contract -------------------------------------------------------------------
def test_every_capture_is_well_formed_with_concrete_shapes(captured):
    for (model, backend), graph in captured.items():
        assert graph.backend == backend
        assert check_graph(graph) == [], (model, backend)
        for node in graph.nodes:
            if node.op in SHAPELESS:
                continue
            shapes = node.shape if node.shape and isinstance(node.shape[0], tuple) else (node.shape,)
            assert all(isinstance(s, tuple) and all(isinstance(d, int) for d in s) for s in shapes), node
            assert isinstance(node.dtype, torch.dtype), node


def test_every_parameter_name_is_listed_once(captured, gpt2, vit, bert, tiny_lm):
    models = _models(gpt2, vit, bert, tiny_lm)
    for (model_name, backend), graph in captured.items():
        model = models[model_name]
        listed = [name for aliases in graph.params.values() for name in aliases]
        expected = [n for n, _ in model.named_parameters(remove_duplicate=False)]
        expected += [n for n, _ in model.named_buffers(remove_duplicate=False)]
        assert sorted(listed) == sorted(expected), (model_name, backend)
        assert all(graph.node(name).op == "param" for name in graph.params)


@pytest.mark.parametrize("key, tied", [
    (("gpt2", "export"), {"transformer.wte.weight", "lm_head.weight"}),
    (("bert", "export"), {"bert.embeddings.word_embeddings.weight", "cls.predictions.decoder.weight"}),
    (("tiny_lm", "export"), {"emb.weight", "head.weight"}),
    (("tiny_lm", "fx"), {"emb.weight", "head.weight"}),
])
def test_tied_weights_are_one_node_with_all_aliases(captured, key, tied):
    graph = captured[key]
    [node_name] = [name for name, aliases in graph.params.items() if tied <= set(aliases)]
    readers = {n.op for n in graph.users(node_name)}
    assert readers == {"embedding", "linear"}, readers


def test_gpt2_export_ops_are_canonical(captured, gpt2):
    graph = captured[("gpt2", "export")]
    ops = collections.Counter(graph.ops())
    assert ops["addmm"] == 8 and ops["scaled_dot_product_attention"] == 2 and ops["split"] == 2
    assert ops["layer_norm"] == 5 and ops["embedding"] == 2 and ops["input"] == 1
    assert not [op for op in ops if "." in op or op.startswith("aten")]
    addmm = graph.node("addmm")
    assert addmm.args[0] == Ref("p_transformer_h_0_attn_c_attn_bias") and addmm.kwargs == {"beta": 1, "alpha": 1}
    sdpa = next(n for n in graph.nodes if n.op == "scaled_dot_product_attention")
    assert len(sdpa.args) == 3 and set(sdpa.kwargs) >= {"attn_mask", "dropout_p", "is_causal", "scale"}
    split = next(n for n in graph.nodes if n.op == "split")
    assert split.shape == ((2, 8, 32),) * 3 and split.args[1:] == (32, 2)
    assert graph.outputs == ["linear"] and graph.node("output").args == (Ref("linear"),)
    assert gpt2[0].config.use_cache is True  # switched off for capture only


def test_vit_export_ops_sources_and_modules(captured):
    graph = captured[("vit", "export")]
    ops = collections.Counter(graph.ops())
    assert {"linear": 9, "layer_norm": 5, "gelu": 2, "unbind": 2, "scaled_dot_product_attention": 2} \
        .items() <= ops.items()
    for node in graph.nodes:
        if node.op in ("linear", "scaled_dot_product_attention"):
            path, line = node.source.rsplit(":", 1)
            assert path.endswith("vision_transformer.py") or f"timm{os.sep}layers{os.sep}" in path, node.source
            assert int(line) > 0 and node.code
    fc1 = next(n for n in graph.nodes if n.module == "blocks.0.mlp.fc1" and n.op == "linear")
    assert fc1.args == (Ref("layer_norm_1"), Ref("p_blocks_0_mlp_fc1_weight"), Ref("p_blocks_0_mlp_fc1_bias"))
    assert fc1.code == "x = self.fc1(x)" and fc1.shape == (2, 17, 64)
    conv = next(n for n in graph.nodes if n.op == "conv2d")
    assert conv.args[3:] == ([2, 2], [0, 0], [1, 1], 1)


def test_export_and_fx_agree_on_interesting_ops(captured):
    for model in ("vit", "tiny_lm"):
        export, fx = captured[(model, "export")], captured[(model, "fx")]

        def interesting(graph):
            return sorted((n.op, n.shape) for n in graph.nodes if n.op in INTERESTING)

        assert interesting(fx) == interesting(export), model
        assert fx.params == export.params
        assert [(n.op, n.shape) for n in fx.nodes if n.op in ("input", "param")] == \
               [(n.op, n.shape) for n in export.nodes if n.op in ("input", "param")]


def test_fx_rewrites_modules_into_functional_ops(captured):
    graph = captured[("tiny_lm", "fx")]
    qkv = graph.node("block_qkv")
    assert (qkv.op, qkv.target, qkv.module) == ("linear", "Linear", "block.qkv")
    assert qkv.args == (Ref("block_ln1"), Ref("p_block_qkv_weight"), Ref("p_block_qkv_bias"))
    assert graph.node("block_ln1").args[1:] == ([16], Ref("p_block_ln1_weight"), Ref("p_block_ln1_bias"), 1e-5)
    assert graph.node("block_drop").op == "identity"  # dropout in eval mode
    assert graph.node("block_act").kwargs == {"approximate": "none"}
    view = next(n for n in graph.nodes if n.op == "view")
    assert view.args[1] == [2, 8, 3, 2, 8]  # sizes read from x.shape are folded into constants
    assert not [n for n in graph.nodes if n.op in ("getattr", "size", "_assert")]
    assert graph.node("block_qkv").source.startswith(__file__.rstrip("c") + ":")


def test_fx_tensor_indexing_becomes_select_slice_unsqueeze():
    inputs = {"x": torch.randn(2, 3, 4)}
    fx, export = capture(Indexing(), inputs, backend="fx"), capture(Indexing(), inputs, backend="export")

    def steps(graph):
        return [(n.op, n.args[1:], n.shape) for n in graph.nodes if n.op in ("select", "slice", "unsqueeze", "reshape")]

    assert steps(fx) == [("slice", (1, 1, 3, 1), (2, 2, 4)), ("unsqueeze", (2,), (2, 2, 1, 4)),
                         ("slice", (2, 0, 2, 1), (2, 3, 2)), ("reshape", ([2, 6],), (2, 6)),
                         ("select", (0, 0), (3, 4))]
    assert steps(export) == steps(fx)
    assert len(fx.outputs) == 3


@pytest.mark.parametrize("backend", ["export", "fx"])
def test_in_place_ops_and_tensor_attributes(backend):
    graph = capture(Mutating(), (torch.randn(2, 4),), backend=backend)
    t, matmul, add, mul = (n for n in graph.nodes if n.op in ("t", "matmul", "add", "mul"))
    assert (t.op, t.args) == ("t", (Ref("p_w"),))
    assert add.args == (Ref(matmul.name), 1.0) and mul.args == (Ref(add.name), 2)


def test_to_networkx_has_an_edge_per_ref(captured):
    graph = captured[("gpt2", "export")]
    nx_graph = graph.to_networkx()
    assert set(nx_graph.nodes) == {n.name for n in graph.nodes}
    pairs = {(ref.name, node.name) for node in graph.nodes for ref in node.refs()}
    assert set(nx_graph.edges) == pairs
    assert nx_graph.nodes["addmm"]["op"] == "addmm"
    cat = captured[("vit", "export")].to_networkx().in_edges("cat", data="positions")
    assert sorted(p for _, _, positions in cat for p in positions) == ["0[0]", "0[1]"]


# -- backends and errors -----------------------------------------------------------------
def test_auto_falls_back_to_fx_when_export_fails():
    graph = capture(Gated(), {"x": torch.randn(2, 4)})
    assert graph.backend == "fx"
    assert [n.op for n in graph.nodes] == ["param", "param", "input", "_gate", "linear", "output"]
    with pytest.raises(SymdslError, match="backend 'export' failed"):
        capture(Gated(), {"x": torch.randn(2, 4)}, backend="export")


def test_all_backends_failing_names_each_reason(monkeypatch, gpt2):
    def broken(model, inputs):
        raise RuntimeError("no luck\nsecond line")

    backends = {"broken": broken, "fx": BUILTIN_BACKENDS["fx"]}    # "auto": export (absent), fx, then the rest
    monkeypatch.setattr(capture_module, "AUTO_ORDER", ("broken", "fx"))
    with pytest.raises(SymdslError) as info:
        capture(*gpt2, backends=backends)
    message = str(info.value)
    assert "  broken: RuntimeError: no luck\n" in message and "second line" not in message
    assert "  fx: " in message and "hint:" in message and "Traceback" not in message
    assert gpt2[0].config.use_cache is True


def test_fx_on_hf_model_fails_readably(gpt2):
    with pytest.raises(SymdslError, match=r"GPT2LMHeadModel: backend 'fx' failed:\n  fx: \w+"):
        capture(*gpt2, backend="fx")


def test_unknown_backend_suggests_a_name():
    with pytest.raises(UsageError, match="unknown capture backend 'exprt'; did you mean 'export'"):
        capture(nn.Linear(2, 2), torch.randn(1, 2), backend="exprt")


def test_a_plugin_backend_is_passed_in_with_the_registries():
    def manual(model, inputs):
        return CapturedGraph("manual", [OpNode("x", "input", (), {}, "x", (1, 2), torch.float32),
                                        OpNode("output", "output", (Ref("x"),), {}, "output")],
                             params={}, inputs=["x"], outputs=["x"])

    registries = Registries.empty().add("capture backend", "manual", manual, origin="test")
    assert capture(nn.Identity(), torch.ones(1, 2), backend="manual",
                   backends=registries.capture_backends).backend == "manual"
    with pytest.raises(UsageError, match="unknown capture backend 'manual'"):
        capture(nn.Identity(), torch.ones(1, 2), backend="manual")      # the built-ins alone do not have it

    dangling = {"dangling": lambda m, i: CapturedGraph(
        "dangling", [OpNode("output", "output", (Ref("nowhere"),), {}, "output")], {}, [], [])}
    with pytest.raises(SymdslError, match="dangling: ValueError: backend returned a malformed graph: "
                                          "node 'output' reads 'nowhere'"):
        capture(nn.Identity(), torch.ones(1, 2), backend="dangling", backends=dangling)


# -- normalisation -------------------------------------------------------------------------
@pytest.mark.parametrize("source, args, kwargs, extra, expected", [
    ("_unsafe_view", (Ref("x"), [-1, 4]), {}, {"out_shape": (3, 4)}, ("view", (Ref("x"), [3, 4]), {})),
    ("linear", (Ref("x"), Ref("w")), {}, {}, ("linear", (Ref("x"), Ref("w"), None), {})),
    ("embedding", (), {"input": Ref("i"), "weight": Ref("w"), "padding_idx": 0}, {},
     ("embedding", (Ref("w"), Ref("i")), {})),
    ("scaled_dot_product_attention", (Ref("q"), Ref("k"), Ref("v"), Ref("m")), {}, {},
     ("scaled_dot_product_attention", (Ref("q"), Ref("k"), Ref("v")),
      {"attn_mask": Ref("m"), "dropout_p": 0.0, "is_causal": False, "scale": None, "enable_gqa": False})),
    ("slice", (Ref("x"), 1, -3, 2 ** 63 - 1), {}, {"shape_of": lambda ref: (2, 8)},
     ("slice", (Ref("x"), 1, 5, 8, 1), {})),
    ("dropout", (Ref("x"),), {"p": 0.1, "training": False}, {}, ("identity", (Ref("x"),), {})),
    ("contiguous", (Ref("x"),), {"memory_format": None}, {}, ("identity", (Ref("x"),), {})),
    ("truediv", (Ref("x"), 2.0), {}, {}, ("div", (Ref("x"), 2.0), {"rounding_mode": None})),
    ("mean", (Ref("x"), -1), {"keepdim": True}, {}, ("mean", (Ref("x"), [-1], True), {"dtype": None})),
    ("cumsum", (Ref("x"), -1), {}, {}, ("cumsum", (Ref("x"), -1), {})),
])
def test_normalize_op(source, args, kwargs, extra, expected):
    assert normalize_op(source, args, kwargs, **extra) == expected
