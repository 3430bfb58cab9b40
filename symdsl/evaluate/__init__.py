"""Evaluate models and linear paths between them: loss/accuracy, interpolation, curves, barriers, plots.

>>> from symdsl.evaluate import Curve, barrier
>>> barrier(Curve([0.0, 0.5, 1.0], [0.2, 1.0, 0.4], [0.9, 0.5, 0.9])).loss
0.7
"""
from .barrier import DEFINITIONS, Barrier, barrier
from .baselines import unigram_loss
from .curve import Curve, loss_curve
from .forward import batch_loss, logits_of, model_logits
from .interpolate import interpolate, weighted_average
from .metrics import evaluate
from .plot import plot_curves
from .record import curves_record, read_curves, save_json

__all__ = ["Barrier", "Curve", "DEFINITIONS", "barrier", "batch_loss", "curves_record", "evaluate", "interpolate",
           "logits_of", "loss_curve", "model_logits", "plot_curves", "read_curves", "save_json", "unigram_loss",
           "weighted_average"]
