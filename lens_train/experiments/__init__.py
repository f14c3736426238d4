"""The experiments behind ``lens-train``: data, models, the classifier module, flows, plots.

Example:
    >>> from lens_train.experiments import DigitsCNN, Classifier
    >>> Classifier(DigitsCNN(channels=[4, 8]), num_classes=10).net.blocks[1][0].out_channels
    8
"""

from .builders import auxiliary_loss_callback, build_lens_callbacks, distillation_callback
from .classifier import Classifier
from .data import DigitsDataModule, ImageDataModule, SyntheticDataModule
from .history import MetricsHistory
from .models import DigitsCNN, DigitsMLP, RowBlock, RowTransformer
from .plots import plot_probe_accuracy, plot_training_curves, write_plots
from .run import run_experiment
from .summary import StageResult, format_summary

__all__ = [
    "Classifier",
    "DigitsCNN",
    "DigitsDataModule",
    "DigitsMLP",
    "ImageDataModule",
    "MetricsHistory",
    "RowBlock",
    "RowTransformer",
    "StageResult",
    "SyntheticDataModule",
    "auxiliary_loss_callback",
    "build_lens_callbacks",
    "distillation_callback",
    "format_summary",
    "plot_probe_accuracy",
    "plot_training_curves",
    "run_experiment",
    "write_plots",
]
