"""Tiny timm ViTs of the SwiGLU/RMSNorm family (aimv2) for the tests: embed_dim 32, 2
blocks, 4 heads, 28x28 images in 14x14 patches (the family's own patch size), every parameter
perturbed so no unit gain or zero bias hides a wrong binding. The factories take no arguments, so
the command line can build them (`--model vit_families:tiny_aimv2`)."""
from __future__ import annotations

import torch

from symdsl.models.build import perturb_parameters

TINY = dict(img_size=28, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0)


def tiny_timm(name: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """timm's ``name`` shrunk to the tiny size, random, every parameter perturbed, in eval mode."""
    import timm

    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **{**TINY, **overrides})
    return perturb_parameters(model, seed=seed).eval()


def tiny_aimv2(seed: int = 0, **overrides) -> torch.nn.Module:
    """An AIMv2 ViT (SwiGLU MLP, RMSNorm, no class token, average-pooled), features only."""
    return tiny_timm("aimv2_large_patch14_224", seed, **overrides)

