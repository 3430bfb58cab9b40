"""Shared helpers: shipped spec names and tiny models of every matched class."""
from __future__ import annotations

import os

# no test reaches a model hub: a name that is not a local folder fails at once instead of
# waiting for the network (tests of Hub ids populate a local cache and set this themselves)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from symdsl.models.build import perturb_parameters, quiet_transformers
from symdsl import find_spec
from symdsl.plugins import load

# the tests' boundary: plugins loaded once, passed to the core functions that take registries
REGISTRIES = load()

SHIPPED = ["hf-bert", "hf-gpt2", "timm-vit"]


def build_hf(spec_name: str, class_name: str, **overrides) -> torch.nn.Module:
    """A tiny random transformers model of ``class_name`` with the spec's example config."""
    import transformers

    spec = find_spec(spec_name)
    cls = getattr(transformers, class_name)
    torch.manual_seed(0)
    with quiet_transformers():
        model = cls(cls.config_class(**{**spec.document.example.config, **overrides}))
    return perturb_parameters(model).eval()


@pytest.fixture(params=SHIPPED)
def shipped_spec(request):
    return find_spec(request.param)


def canonical_example(name: str, seed: int = 0):
    """(spec, canonicalized float64 example model, resolved spec) for a shipped spec."""
    from symdsl.canon import canonicalize
    from symdsl.models import build_example
    from symdsl.spec import resolve

    spec = find_spec(name)
    model = build_example(spec, seed=seed).double()
    resolved = resolve(spec, model, registries=REGISTRIES)
    canonicalize(model, resolved)
    return spec, model, resolved


def relative_distance(resolved, x, y) -> float:
    """||x - y|| / ||y|| over the spec's tensors."""
    num = sum(float(((x[n] - y[n]) ** 2).sum()) for n in resolved.tensors)
    den = sum(float((y[n] ** 2).sum()) for n in resolved.tensors)
    return (num / den) ** 0.5


def pytest_collection_modifyitems(session, config, items):
    """A run that collects no test is an error, never a silent pass (pytest's exit 5)."""
    if not items:
        raise pytest.UsageError("no tests were collected: check the test paths and -k/-m filters")


# Tiny tensors on a 2-core machine: one intra-op thread per test worker is far faster than two
# workers each spinning two threads (the library itself leaves torch's threading alone).
torch.set_num_threads(1)
