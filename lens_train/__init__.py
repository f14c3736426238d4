"""lens_train: a model's insides, usable while it trains."""

from . import errors
from .capture import LayerLog, ModelLog, ModuleLog, get_model_activations, get_model_metadata, log_forward_pass
from .errors import BundleError, LayerNotFoundError, LensTrainError

__version__ = "0.1.0"

__all__ = [
    "BundleError",
    "LayerLog",
    "LayerNotFoundError",
    "LensTrainError",
    "ModelLog",
    "ModuleLog",
    "__version__",
    "errors",
    "get_model_activations",
    "get_model_metadata",
    "log_forward_pass",
]
