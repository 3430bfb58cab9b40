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



def tiny_eva02(seed: int = 0, **overrides) -> torch.nn.Module:
    """An EVA02 ViT (2-D RoPE on the patch tokens, fused qkv with q/v biases and a zero k-bias
    buffer, SwiGLU MLP, class token, average pooling), features only unless ``num_classes``.
    ``ref_feat_shape`` is the tiny grid (2x2 patches), so the RoPE angles are those of the grid."""
    return tiny_timm("eva02_tiny_patch14_224", seed, **{"ref_feat_shape": (2, 2), **overrides})


def deit_tiny_32(seed: int = 0, depth: int = 2) -> torch.nn.Module:
    """DeiT-tiny as timm builds it (embed_dim 192, 3 heads, MLP 768, patch 16, 3 channels, class
    token) for 32x32 images (2x2 patches), 2 of its 12 blocks by default so a float64 check takes
    seconds (all 12: ``depth=12``, recorded in benchmarks/RESULTS.md)."""
    import timm

    torch.manual_seed(seed)
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=32, depth=depth)
    return perturb_parameters(model, seed=seed).eval()


def tiny_vit_no_class_token(seed: int = 0) -> torch.nn.Module:
    """A timm ViT built with ``class_token=False, global_pool="avg"`` (3 channels, 32x32, patch 16,
    embed_dim 32, 2 blocks, 4 heads): the tokens are averaged, so timm-vit-gap describes it."""
    return tiny_timm("deit_tiny_patch16_224", seed, img_size=32, patch_size=16, class_token=False, global_pool="avg")
