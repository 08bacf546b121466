"""torchmetrics.Metric subclasses."""

from lit_gp.metrics.toy import ModeCoverage, WassersteinEstimate

__all__ = ["ModeCoverage", "WassersteinEstimate"]
