"""Shared steps of the decoder-family tests (test_neox.py, test_gptj.py, test_phi3.py): a tiny
random model with every parameter perturbed, a spec text edited on purpose, weight matching of a
hidden element, a learned-matching run."""
from __future__ import annotations

from pathlib import Path

import torch

import symdsl
from conftest import REGISTRIES, relative_distance
from symdsl.act import act_state_dict, random_transform
from symdsl.canon import canonicalize
from symdsl.models.build import perturb_parameters, quiet_transformers
from symdsl.spec import resolve

# a small character-level corpus: 28 symbols, below every tiny model's vocabulary of 64
TEXT = "the quick brown fox jumps over the lazy dog. " * 40


def tiny(cls_name: str, config: dict, seed: int = 0) -> torch.nn.Module:
    """``cls_name`` from transformers built from ``config``, every parameter perturbed (no unit
    gain or zero bias hides a wrong binding)."""
    import transformers

    cls = getattr(transformers, cls_name)
    torch.manual_seed(seed)
    with quiet_transformers():
        model = cls(cls.config_class(**config))
    return perturb_parameters(model, seed=seed).eval()


def edited_spec(name: str, *edits: tuple[str, str]):
    """The shipped spec ``name`` with each ``(old, new)`` replaced (``old`` must occur)."""
    text = Path(symdsl.find_spec(name).file).read_text()
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    return symdsl.load_spec_text(text)


def hidden_element_distances(spec, model) -> tuple[float, float]:
    """(distance of B from A, distance after weight matching) with B = A moved by a random element
    of every site: the relative distance over the spec's tensors, in float64."""
    model = model.double()
    resolved = resolve(spec, model, registries=REGISTRIES)
    canonicalize(model, resolved)
    a = {k: v.clone() for k, v in model.state_dict().items()}
    b = act_state_dict(resolved, a, random_transform(resolved, seed=3))
    result = REGISTRIES.matchers["weight"].match(resolved, a, b)
    return relative_distance(resolved, b, a), relative_distance(resolved, act_state_dict(resolved, b, result.elements), a)


def learned_run(models: list[torch.nn.Module]):
    """Learned matching of the second model onto the first, a few steps on a character corpus."""
    from symdsl.api.pipeline import match, prepare
    from symdsl.data import text_dataset

    data = text_dataset(TEXT, block_size=16)
    return match(prepare(models), 1, "learned", data=data, steps=4, eval_every=2)
