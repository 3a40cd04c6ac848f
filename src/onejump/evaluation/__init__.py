"""Evaluation: metrics of lenses at every exit level, the OJFA selection, statistics."""

from .metrics import EvalResult, evaluate
from .selection import select_ojfa
from .statistics import bootstrap_ci, paired_test

__all__ = ["EvalResult", "bootstrap_ci", "evaluate", "paired_test", "select_ojfa"]
