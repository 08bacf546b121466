"""torchmetrics.Metric subclasses."""

from lit_gp.metrics.stacked import ModeHistogram, StackedModeClassifier
from lit_gp.metrics.toy import ModeCoverage, WassersteinEstimate

__all__ = [
    "ModeCoverage",
    "ModeHistogram",
    "StackedModeClassifier",
    "WassersteinEstimate",
]
