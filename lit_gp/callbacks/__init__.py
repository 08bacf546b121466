"""Lightning callbacks."""

from lit_gp.callbacks.checkpoint import GANCheckpoint
from lit_gp.callbacks.gradient_norms import GradientNormHistograms
from lit_gp.callbacks.image_metrics import ImageMetrics
from lit_gp.callbacks.nonfinite import NonFiniteGuard
from lit_gp.callbacks.progress import GeneratorStepProgressBar
from lit_gp.callbacks.sample_grid import SampleGrid
from lit_gp.callbacks.stacked_modes import StackedModes
from lit_gp.callbacks.step_limit import GeneratorStepLimit
from lit_gp.callbacks.toy_plot import ToyPlot

__all__ = [
    "GANCheckpoint",
    "GeneratorStepLimit",
    "GeneratorStepProgressBar",
    "GradientNormHistograms",
    "ImageMetrics",
    "NonFiniteGuard",
    "SampleGrid",
    "StackedModes",
    "ToyPlot",
]
