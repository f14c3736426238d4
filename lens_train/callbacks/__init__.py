"""Lightning callbacks: add a capability to an unmodified ``LightningModule``.

Example:
    >>> import lens_train as lt
    >>> sorted(lt.callbacks.__all__)[:2]
    ['ActivationSnapshotCallback', 'ActivationStatsCallback']
"""

from .activation_snapshot import ActivationSnapshotCallback
from .activation_stats import ActivationStatsCallback
from .auxiliary_loss import AuxiliaryLossCallback
from .distillation import DistillationCallback
from .graph_logger import GraphLoggerCallback
from .importance import CausalImportanceCallback
from .probe import ProbeCallback

__all__ = [
    "ActivationSnapshotCallback",
    "ActivationStatsCallback",
    "AuxiliaryLossCallback",
    "CausalImportanceCallback",
    "DistillationCallback",
    "GraphLoggerCallback",
    "ProbeCallback",
]
