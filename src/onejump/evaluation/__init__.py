"""Evaluation: every lens at every exit level, the K x K reuse matrix, the OJFA selection, statistics."""

from .evaluator import evaluate, reuse_matrix
from .metrics import METRICS
from .result import EvalResult
from .selection import Selection, select_ojfa
from .statistics import bootstrap_ci, paired_test

__all__ = ["METRICS", "EvalResult", "Selection", "bootstrap_ci", "evaluate", "paired_test", "reuse_matrix",
           "select_ojfa"]
