"""lens_train: a model's insides, usable while it trains."""

from . import callbacks, errors, fastlog
from .bundle import load, save
from .capture import LayerLog, ModelLog, ModuleLog, get_model_activations, get_model_metadata, log_forward_pass
from .capture.validation import validate_model_activations
from .extract import Extract
from .errors import BundleError, BundleWarning, LayerNotFoundError, LensTrainError
from .lens_module import LensModule
from .bundle import load_snapshots
from .train import AuxiliaryLoss, Distillation, Inspect, Probes, Taps, edits, get_layers, get_nodes, losses
from .viz import show_model_graph
from .interventions import PatchResult, intervene, patch

from ._version import __version__

__all__ = [
    "AuxiliaryLoss",
    "BundleError",
    "BundleWarning",
    "callbacks",
    "Distillation",
    "edits",
    "errors",
    "Extract",
    "fastlog",
    "get_layers",
    "get_model_activations",
    "get_model_metadata",
    "get_nodes",
    "Inspect",
    "intervene",
    "LayerLog",
    "LayerNotFoundError",
    "LensModule",
    "LensTrainError",
    "load",
    "load_snapshots",
    "log_forward_pass",
    "losses",
    "ModelLog",
    "ModuleLog",
    "patch",
    "PatchResult",
    "Probes",
    "save",
    "show_model_graph",
    "Taps",
    "validate_model_activations",
    "__version__",
]
