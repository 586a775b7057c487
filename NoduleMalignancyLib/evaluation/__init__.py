"""Out-of-fold evaluation: metrics, baselines (size only, constant, human agreement), report."""

from .report import evaluate

__all__ = ["evaluate"]
