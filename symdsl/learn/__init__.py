"""Learned matching's machinery: trainable group elements, a differentiable action, the path loss, the loop.

Each group kind's trainable parametrisation lives with the kind (:mod:`symdsl.groups.parametrizations`).

>>> from symdsl.learn import act_dense, PathLoss, learn_transforms, parametrize_sites, parse_sampler
"""
from .dense_action import act_dense, dense_sites
from .loop import LearnResult, learn_transforms, validation_objective
from .objective import PathLoss
from .parametrize import Fixed, parametrize_sites, trained_sites
from .samplers import DirichletWeights, UniformLambda, parse_sampler

__all__ = ["DirichletWeights", "Fixed", "LearnResult", "PathLoss", "UniformLambda", "act_dense", "dense_sites",
           "learn_transforms", "parametrize_sites", "parse_sampler", "trained_sites", "validation_objective"]
