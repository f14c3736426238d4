"""The capture engine: one forward pass -> a :class:`ModelLog`."""

from .api import get_model_activations, get_model_metadata, log_forward_pass
from .layer_log import LayerLog
from .model_log import ModelLog, ModuleLog

__all__ = ["LayerLog", "ModelLog", "ModuleLog", "get_model_activations", "get_model_metadata", "log_forward_pass"]
