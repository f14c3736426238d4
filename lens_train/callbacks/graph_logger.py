"""``GraphLoggerCallback``: the model graph at fit start and every few epochs."""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from typing_extensions import override

from ..capture.api import log_forward_pass
from ..capture.model_log import ModelLog
from ..arguments import check_bool, check_int
from ..errors import InvalidArgumentError
from ..viz.dot import graph_to_dot
from ..viz.graph import VisGraph, build_graph
from ..viz.placement import layer_key, make_options
from ..viz.render import render_dot
from ._base import LensCallback
from ._images import accepts_images, log_image
from ._shared import BatchGetter, first_batch, model_inputs, quiet_forward, refuse_sharded, run_dir
from .activation_stats import dead_fraction


class GraphLoggerCallback(LensCallback):
    """Render the model graph into ``<log_dir>/graphs/`` at fit start and every n epochs.

    The graph is captured on rank zero from the unwrapped module in eval mode, under
    ``no_grad`` and a forked RNG, with buffers restored, on a fixed example input
    (``example_input_array``, else the first validation batch, else the first training
    batch). Nodes are coloured by their fraction of dead units on that input (white: none,
    red: all), so unhealthy layers stand out. Rendering runs in a background thread.
    The picture also goes, as ``lens/graph``, to every logger that takes images
    (TensorBoard, W&B, MLflow).

    Files: ``graphs/step000000.svg`` at fit start, ``graphs/epoch003.svg`` after epoch 3.

    Args:
        every_n_epochs: render after every this many epochs (0: only at fit start).
        vis_opt: ``"rolled"`` or ``"unrolled"`` (see ``lt.viz.render_graph``).
        vis_fileformat: ``"svg"``, ``"png"``, or any format the Graphviz program writes.
        vis_nesting_depth: show this many levels of modules, counted from the LightningModule;
            deeper modules are drawn as one box each (None: all). The default 4 draws each
            block of the shipped transformer as its attention and MLP boxes (289 x 2488 px;
            every module: 509 x 7412 px).
        annotate: colour nodes by their fraction of dead units.
        background: render in a background thread (the capture itself is always in line).
        batch_to_input: how to find the model input in a batch.

    Example:
        >>> GraphLoggerCallback(every_n_epochs=5, vis_opt="unrolled").every_n_epochs
        5
    """

    def __init__(self, every_n_epochs: int = 1, vis_opt: str = "rolled", vis_fileformat: str = "svg",
                 vis_nesting_depth: int | None = 4, annotate: bool = True, background: bool = True,
                 batch_to_input: BatchGetter = None) -> None:
        super().__init__(batch_to_input=batch_to_input)
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 0:
            raise InvalidArgumentError(
                f"every_n_epochs must be an int >= 0, got {every_n_epochs!r}. Example: every_n_epochs=5."
            )
        if vis_opt not in ("rolled", "unrolled"):
            raise InvalidArgumentError(f"vis_opt must be 'rolled' or 'unrolled', got {vis_opt!r}. "
                                       "Example: GraphLoggerCallback(vis_opt='unrolled').")
        if not isinstance(vis_fileformat, str) or not vis_fileformat.isalnum():
            raise InvalidArgumentError(f"vis_fileformat must be a format name like 'svg' or 'png', got {vis_fileformat!r}. "
                                       "Example: GraphLoggerCallback(vis_fileformat='png').")
        check_int("vis_nesting_depth", vis_nesting_depth, "GraphLoggerCallback(vis_nesting_depth=2)", low=1, optional=True)
        check_bool("annotate", annotate, "GraphLoggerCallback(annotate=False)")
        check_bool("background", background, "GraphLoggerCallback(background=False)")
        self.every_n_epochs = every_n_epochs
        self.vis_opt = vis_opt
        self.vis_fileformat = vis_fileformat.lower()
        self.vis_nesting_depth = vis_nesting_depth
        self.annotate = annotate
        self.background = background
        self.written: list[Path] = []
        self.timings: list[dict[str, float]] = []
        self._example: Any = None
        self._dir: Path | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._jobs: list[Future] = []

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(every_n_epochs=self.every_n_epochs, vis_opt=self.vis_opt)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._dir = run_dir(trainer) / "graphs"  # every rank: log_dir broadcasts

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        refuse_sharded(self, trainer, pl_module)
        if not trainer.is_global_zero:
            return
        self._run_render(trainer, pl_module, f"step{trainer.global_step:06d}")

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or not self.every_n_epochs or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        self._run_render(trainer, pl_module, f"epoch{trainer.current_epoch:03d}")

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.wait()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.wait()

    def wait(self) -> None:
        """Wait for background renders; re-raise the first rendering error."""
        jobs, self._jobs = self._jobs, []
        errors = [job.exception() for job in jobs if job.exception() is not None]
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if errors:
            raise errors[0]

    def _run_render(self, trainer: pl.Trainer, pl_module: pl.LightningModule, name: str) -> None:
        start = time.perf_counter()
        log = self.capture(trainer, pl_module)
        graph = self.graph(log)
        capture_s = time.perf_counter() - start
        out = (self._dir or run_dir(trainer) / "graphs") / f"{name}.{self.vis_fileformat}"
        if not self.background:
            self._finish(graph, out, trainer, capture_s)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lens-graph")
        self._jobs.append(self._pool.submit(self._finish, graph, out, trainer, capture_s))

    def capture(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> ModelLog:
        """Log one quiet forward pass of the unwrapped module (dead-unit fractions kept)."""
        if self._example is None:
            self._example = _example_input(self, trainer, pl_module)
        args, kwargs = model_inputs(pl_module, move_data_to_device(self._example, pl_module.device))
        post = _dead_or_none if self.annotate else None
        with quiet_forward(pl_module):
            return log_forward_pass(pl_module, args, kwargs, layers_to_save="all" if self.annotate else None,
                                    activation_postfunc=post, save_raw_activation=False, random_seed=0)

    def graph(self, log: ModelLog) -> VisGraph:
        """The drawable graph of ``log``, nodes coloured by dead-unit fraction."""
        graph = build_graph(log, make_options(log, self.vis_opt, self.vis_nesting_depth, None))
        if self.annotate:
            _colour_dead(graph, log, self.vis_opt == "rolled")
        return graph

    def _finish(self, graph: VisGraph, out: Path, trainer: pl.Trainer, capture_s: float) -> None:
        start = time.perf_counter()
        source = graph_to_dot(graph)
        path = render_dot(source, out, self.vis_fileformat)
        self.written.append(path)
        if any(accepts_images(lg) for lg in trainer.loggers):
            png = path if self.vis_fileformat == "png" else render_dot(source, out.with_suffix(".png"), "png")
            log_image(trainer.loggers, "lens/graph", png, step=trainer.global_step)
        self.timings.append({"capture_s": capture_s, "render_s": time.perf_counter() - start})


def _dead_or_none(t: torch.Tensor) -> float | None:
    if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() == 0 or t.numel() == 0:
        return None
    return float(dead_fraction(t.detach().float()))


def _colour_dead(graph: VisGraph, log: ModelLog, rolled: bool) -> None:
    worst: dict[str, float] = {}
    for layer in log.layers:
        value = layer.transformed_activation
        if isinstance(value, float) and not (layer.is_input or layer.is_output or layer.is_buffer):
            key = layer_key(layer, rolled)
            worst[key] = max(worst.get(key, 0.0), value)
    for node in graph.nodes:
        frac = worst.get(node.key)
        if frac:
            shade = int(255 * (1.0 - frac))
            node.attrs["fillcolor"] = f"#FF{shade:02X}{shade:02X}"
            node.attrs["tooltip"] = node.attrs.get("tooltip", "") + f"\ndead units: {frac:.0%}"


def _example_input(callback: LensCallback, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any:
    if pl_module.example_input_array is not None:
        return pl_module.example_input_array
    for stage in ("val", "train"):
        batch = first_batch(trainer, stage)
        if batch is not None:
            return callback.batch_input(batch)
    raise InvalidArgumentError(
        f"{type(callback).__name__} needs an example input: {type(pl_module).__name__} has no example_input_array "
        "and no data. Set self.example_input_array = torch.zeros(...) in the module's __init__."
    )
