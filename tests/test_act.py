"""The action engine against dense-matrix references."""
from __future__ import annotations

import pytest
import torch

from symdsl.act import act_model, act_state_dict, act_tensor, identity_transform, random_transform
from symdsl.canon import canonicalize
from symdsl.errors import BindError
from symdsl.groups import get_group_kind
from symdsl.models import build_example
from symdsl.spec import load_spec_text, resolve
from symdsl.spec.cache import resolve_cached
from symdsl import find_spec
from conftest import REGISTRIES


def _block_matrix(perm, blocks):
    """Dense (h*k, h*k) matrix of y[a] = blocks[a] @ x[perm[a]] on a (heads k) axis."""
    h, k, _ = blocks.shape
    m = torch.zeros(h * k, h * k, dtype=blocks.dtype)
    for a in range(h):
        b = int(perm[a])
        m[a * k:(a + 1) * k, b * k:(b + 1) * k] = blocks[a]
    return m


@pytest.fixture(scope="module")
def gpt2():
    spec = find_spec("hf-gpt2")
    model = build_example(spec).double()
    resolved = resolve(spec, model, registries=REGISTRIES)
    canonicalize(model, resolved)
    return spec, model, resolved


def test_per_head_maps_follow_the_head_permutation(gpt2):
    _, model, resolved = gpt2
    elements = random_transform(resolved, ["heads.0", "qk.0", "ov.0"], seed=3)
    perm, qk, ov = elements["heads.0"], elements["qk.0"], elements["ov.0"]
    weight = model.transformer.h[0].attn.c_attn.weight.detach()         # (d, 3d) = (in, q|k|v)
    moved = act_tensor(weight, resolved.tensors["transformer.h.0.attn.c_attn.weight"], elements, resolved.sites)
    q, k, v = weight.split(32, dim=1)
    inv_t = torch.linalg.inv(qk).mT
    expected = torch.cat([q @ _block_matrix(perm, qk).T,
                          k @ _block_matrix(perm, inv_t).T,
                          v @ _block_matrix(perm, ov).T], dim=1)
    torch.testing.assert_close(moved, expected, rtol=1e-12, atol=1e-12)
    proj = model.transformer.h[0].attn.c_proj.weight.detach()           # (heads*k, d): reads v with ov^-T
    moved_proj = act_tensor(proj, resolved.tensors["transformer.h.0.attn.c_proj.weight"], elements, resolved.sites)
    expected_proj = _block_matrix(perm, torch.linalg.inv(ov).mT) @ proj
    torch.testing.assert_close(moved_proj, expected_proj, rtol=1e-12, atol=1e-12)


def test_identity_transform_changes_nothing(gpt2):
    _, model, resolved = gpt2
    state = model.state_dict()
    moved = act_state_dict(resolved, state, identity_transform(resolved))
    for name, tensor in state.items():
        torch.testing.assert_close(moved[name], tensor, rtol=0, atol=1e-14)


def test_acting_twice_equals_acting_with_the_composition(gpt2):
    _, model, resolved = gpt2
    state = model.state_dict()
    g1 = random_transform(resolved, ["resid", "mlp.0", "mlp.1"], seed=1)
    g2 = random_transform(resolved, ["resid", "mlp.0", "mlp.1"], seed=2)
    composed = {s: resolved.sites[s].kind.compose(g2[s], g1[s]) for s in g1}
    twice = act_state_dict(resolved, act_state_dict(resolved, state, g1), g2)
    once = act_state_dict(resolved, state, composed)
    for name in state:
        torch.testing.assert_close(twice[name], once[name], rtol=1e-12, atol=1e-12)


def test_dtype_and_device_are_preserved(gpt2):
    _, model, resolved = gpt2
    state = {k: v.float() for k, v in model.state_dict().items()}
    moved = act_state_dict(resolved, state, random_transform(resolved, seed=0))
    assert all(t.dtype == torch.float32 and t.device == state[n].device for n, t in moved.items())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_stay_on_cuda(gpt2):
    _, model, resolved = gpt2
    state = {k: v.cuda() for k, v in model.state_dict().items()}
    elements = random_transform(resolved, seed=0, device="cuda")
    moved = act_state_dict(resolved, state, elements)
    reference = act_state_dict(resolved, model.state_dict(), random_transform(resolved, seed=0))
    for name, tensor in moved.items():
        assert tensor.is_cuda
        torch.testing.assert_close(tensor.cpu(), reference[name], rtol=1e-10, atol=1e-10)


def test_act_model_matches_act_state_dict(gpt2):
    spec, model, resolved = gpt2
    elements = random_transform(resolved, seed=5)
    expected = act_state_dict(resolved, model.state_dict(), elements)
    clone = build_example(spec).double()
    canonicalize(clone, resolve(spec, clone, registries=REGISTRIES))
    clone.load_state_dict(model.state_dict())
    act_model(resolved, clone, elements)
    for name, tensor in clone.state_dict().items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=0)


def test_unknown_site_in_a_transform_is_an_error(gpt2):
    _, model, resolved = gpt2
    with pytest.raises(BindError, match="not in spec 'hf-gpt2'"):
        act_state_dict(resolved, model.state_dict(), {"resdi": torch.eye(32)})


def test_rectangular_sites_change_shapes_through_the_dual():
    spec = load_spec_text("""
symdsl: 1
name: widen
sites: {hidden: {group: stiefel, size: 6, size_in: 4}}
tensors: {0.weight: "hidden _", 0.bias: hidden, 2.weight: "_ hidden'"}
invariant: [2.bias]
""")
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Identity(), torch.nn.Linear(4, 2)).double()
    resolved = resolve(spec, net, registries=REGISTRIES)
    lift = get_group_kind("stiefel").random(6, 4, generator=torch.Generator().manual_seed(0))
    wide = act_state_dict(resolved, net.state_dict(), {"hidden": lift})
    assert wide["0.weight"].shape == (6, 3) and wide["2.weight"].shape == (2, 6)
    wide_net = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.Identity(), torch.nn.Linear(6, 2)).double()
    wide_net.load_state_dict(wide)
    x = torch.randn(5, 3, dtype=torch.float64)
    torch.testing.assert_close(wide_net(x), net(x), rtol=1e-12, atol=1e-12)   # linear path: exact lift
    with pytest.raises(BindError, match="change shape"):
        act_model(resolved, net, {"hidden": lift})


def test_resolution_is_reused_for_models_of_one_configuration():
    spec = find_spec("timm-vit")
    a, b = build_example(spec, seed=0), build_example(spec, seed=1)
    assert resolve_cached(spec, a, REGISTRIES) is resolve_cached(spec, b, REGISTRIES)
