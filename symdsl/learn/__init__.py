"""Learned matching's machinery: trainable group elements, a differentiable action, the path loss, the loop.

>>> from symdsl.learn import CayleyOrthogonal, act_dense, PathLoss, learn_transforms, parse_sampler
"""
from .dense_action import act_dense, dense_sites
from .loop import LearnResult, learn_transforms, validation_objective
from .objective import PathLoss
from .parametrize import (CayleyOrthogonal, CayleyStiefel, FreeInvertible, Parametrization,
                          StraightThroughPermutation, StraightThroughSemiPermutation, cayley)
from .samplers import DirichletWeights, UniformLambda, parse_sampler

__all__ = ["CayleyOrthogonal", "CayleyStiefel", "DirichletWeights", "FreeInvertible", "LearnResult", "Parametrization",
           "PathLoss", "StraightThroughPermutation", "StraightThroughSemiPermutation", "UniformLambda", "act_dense",
           "cayley", "dense_sites", "learn_transforms", "parse_sampler", "validation_objective"]
