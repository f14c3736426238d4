"""Send a PNG to every Lightning logger that takes images.

Lightning has no common ``log_image``: TensorBoard takes an array
(``experiment.add_image``), W&B a file (``WandbLogger.log_image``), MLflow an artifact
(``experiment.log_artifact(run_id, path)``). Loggers of other kinds (CSV) get nothing: the
file in the run dir is the baseline every run has.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any


def log_image(loggers: Iterable[Any], key: str, png: str | Path, step: int | None = None) -> list[str]:
    """Log the PNG ``png`` under ``key`` to each logger that accepts images; returns their class names.

    Call it on rank zero (loggers are rank-zero only).

    Example:
        >>> import tempfile
        >>> from matplotlib.figure import Figure
        >>> png = tempfile.mkdtemp() + "/a.png"
        >>> Figure(figsize=(1, 1)).savefig(png)
        >>> class Board:  # what TensorBoardLogger offers
        ...     class experiment:
        ...         @staticmethod
        ...         def add_image(tag, image, global_step, dataformats): print(tag, image.shape[2], dataformats)
        >>> log_image([Board(), object()], "lens/graph", png, step=3)
        lens/graph 3 HWC
        ['Board']
    """
    used = []
    for logger in loggers:
        if _send(logger, key, Path(png), step):
            used.append(type(logger).__name__)
    return used


def accepts_images(logger: Any) -> bool:
    """Whether :func:`log_image` sends images to ``logger`` (TensorBoard, W&B, MLflow; not CSV).

    Example:
        >>> from lightning.pytorch.loggers import CSVLogger
        >>> accepts_images(CSVLogger("."))
        False
    """
    if hasattr(logger, "log_image"):
        return True
    experiment = getattr(logger, "experiment", None)
    return hasattr(experiment, "add_image") or (hasattr(experiment, "log_artifact") and bool(getattr(logger, "run_id", None)))


def _send(logger: Any, key: str, png: Path, step: int | None) -> bool:
    experiment = getattr(logger, "experiment", None)
    if hasattr(logger, "log_image"):  # WandbLogger: a file path is an image
        logger.log_image(key=key, images=[str(png)], step=step)
    elif hasattr(experiment, "add_image"):  # TensorBoard's SummaryWriter
        experiment.add_image(key, read_png(png), global_step=step, dataformats="HWC")
    elif hasattr(experiment, "log_artifact") and getattr(logger, "run_id", None):  # MLflow's client
        experiment.log_artifact(logger.run_id, str(png), artifact_path=key.rsplit("/", 1)[0] if "/" in key else None)
    else:
        return False
    return True


def read_png(path: str | Path) -> Any:
    """The image at ``path`` as an ``(H, W, 3)`` uint8 array.

    Example:
        >>> import tempfile
        >>> from matplotlib.figure import Figure
        >>> png = tempfile.mkdtemp() + "/a.png"
        >>> Figure(figsize=(1, 2)).savefig(png, dpi=10)
        >>> read_png(png).shape
        (20, 10, 3)
    """
    import numpy as np
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))
