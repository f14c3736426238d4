"""Training with taps: graph-connected activations every step, auxiliary losses,
distillation and probes. Framework-free; the Lightning callbacks wrap these."""

from . import edits, losses, schedules
from .auxiliary import AuxiliaryLoss
from .distillation import Distillation
from .probes import Probes
from .surgery import Inspect, get_layers, get_nodes
from .taps import Taps

__all__ = ["AuxiliaryLoss", "Distillation", "Inspect", "Probes", "Taps", "edits", "get_layers", "get_nodes", "losses",
           "schedules"]
