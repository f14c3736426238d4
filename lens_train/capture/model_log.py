"""The log of one forward pass: an ordered list of layer passes with lookup."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

from ..errors import LayerNotFoundError, suggestion_text
from .layer_log import FILL_LOCK, LayerLog
from .lookup import KeyMap, LayerKeys, resolve, select
from .outlets import export_table
from .printing import format_model_log


@dataclass
class ModuleLog:
    """One module of the model and its calls during the forward pass.

    Example:
        >>> import torch, lens_train as lt
        >>> log = lt.log_forward_pass(torch.nn.Sequential(torch.nn.Linear(3, 2)), torch.ones(1, 3))
        >>> log.modules["0"].module_type, log.modules["0"].num_passes
        ('Linear', 1)
    """

    address: str
    module_type: str
    depth: int
    num_params: int
    calls: list[dict[str, Any]] = field(default_factory=list)

    @property
    def num_passes(self) -> int:
        """How many times the module was called."""
        return len(self.calls)

    @property
    def output_layers(self) -> list[str]:
        """Labels of the output tensors of every call, in call order."""
        return [lab for c in self.calls for lab in c["outputs"]]


class ModuleTable(dict):
    """``log.modules``: module address -> :class:`ModuleLog`; ``"fc:2"`` gives one call."""

    def __getitem__(self, key: str) -> Any:
        if isinstance(key, str) and key not in self and ":" in key:
            address, _, num = key.rpartition(":")
            if address in self and num.isdigit() and 0 < int(num) <= len(dict.__getitem__(self, address).calls):
                return dict.__getitem__(self, address).calls[int(num) - 1]
        try:
            return dict.__getitem__(self, key)
        except KeyError:
            raise LayerNotFoundError(f"No module {key!r} was called." + suggestion_text(str(key), self, "list(log.modules)")) from None


class ModelLog:
    """Every operation of one forward pass, in execution order.

    Index it with a label (``log["conv2d_3_7"]``), a short label (``log["conv2d_3"]``),
    ``label:pass`` (``log["linear_1_1:2"]``), a module address (``log["features.6"]``),
    or an int (``log[7]``, ``log[-1]``).

    Example:
        >>> import torch, lens_train as lt
        >>> log = lt.log_forward_pass(torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU()), torch.ones(1, 3))
        >>> log.layer_labels
        ['input_1_0', 'linear_1_1', 'relu_1_2', 'output_1_3']
        >>> log["0"] is log["linear_1_1"] is log[1]
        True
    """

    def __init__(self, model_name: str, layers: list[LayerLog], modules: ModuleTable | Callable[[], ModuleTable],
                 meta: dict[str, Any], keys: LayerKeys | None = None) -> None:
        """``modules``: the table, or a function that makes it (called once, when ``log.modules`` is first read)."""
        self.model_name = model_name
        self.layers = layers
        self._module_table: ModuleTable | None = modules if isinstance(modules, ModuleTable) else None
        self._module_source = None if isinstance(modules, ModuleTable) else modules
        self.meta = meta
        self.random_seed: int | None = meta.get("random_seed")
        self.elapsed_s: float = meta.get("elapsed_s", 0.0)
        self.num_params_total: int = meta.get("num_params_total", 0)
        self.num_param_tensors: int = meta.get("num_param_tensors", 0)
        self.param_bytes_total: int = meta.get("param_bytes_total", 0)
        self.structure: dict[str, Any] = meta.get("structure", {})
        self.replay_state: Any = None  # set by log_forward_pass(..., replayable=True)
        if keys is not None:  # a capture's: its layers know their position and keys already
            self._key_index = keys
            return
        self._key_index = LayerKeys(layers)  # reads every layer: a pending one (of another log) is filled here
        for i, layer in enumerate(layers):
            layer._key_index, layer._key_pos, layer._lookup_keys = self._key_index, i, None

    @property
    def _keys(self) -> KeyMap:
        return self._key_index.map

    @property
    def modules(self) -> ModuleTable:
        """Module address -> :class:`ModuleLog` of every module called (made when first read)."""
        table = self._module_table
        if table is None:
            with FILL_LOCK:
                if self._module_table is None:
                    self._module_table = self._module_source()
                    self._module_source = None
            table = self._module_table
        return table

    @modules.setter
    def modules(self, table: ModuleTable) -> None:
        self._module_table, self._module_source = table, None

    # -- lookup -----------------------------------------------------------------------
    def __getitem__(self, key: str | int) -> LayerLog:
        try:
            return self.layers[resolve(self._keys, self.layers, key)]
        except LayerNotFoundError:
            update = next((u for u in self.buffer_updates if u["label"] == key), None)
            if update is None:
                raise
            raise LayerNotFoundError(
                f"{key!r} is bookkeeping (an update of buffer {update['buffer']!r}), not a data-path layer; "
                f"its record is in log.buffer_updates. Look up the op that uses the buffer instead."
            ) from None

    def __contains__(self, key: object) -> bool:
        if isinstance(key, int) and not isinstance(key, bool):
            return -len(self.layers) <= key < len(self.layers)
        return isinstance(key, str) and key in self._keys

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[LayerLog]:
        return iter(self.layers)

    def select(self, selectors: Any) -> list[LayerLog]:
        """The passes chosen by ``layers_to_save``-style selectors, in execution order."""
        return [self.layers[i] for i in select(self._keys, self.layers, selectors)]

    @property
    def lookup_keys(self) -> list[str]:
        """Every string key ``log[...]`` accepts (ints ``-len(log)..len(log) - 1`` work too)."""
        return list(self._keys)

    @property
    def layer_labels(self) -> list[str]:
        """Labels of every layer pass, in execution order."""
        return [layer.layer_label for layer in self.layers]

    @property
    def layer_labels_no_pass(self) -> list[str]:
        """Labels of every layer (passes merged), in order of first execution."""
        return list(dict.fromkeys(layer.layer_label_no_pass for layer in self.layers))

    def layer_passes(self, label: str) -> list[LayerLog]:
        """All passes of the layer ``label`` (with or without a ``:pass`` suffix)."""
        base = self[label].layer_label_no_pass if ":" in label or label in self._keys and not isinstance(self._keys[label], tuple) else label
        found = [layer for layer in self.layers if layer.layer_label_no_pass == base]
        if not found:
            raise LayerNotFoundError(f"No layer {label!r}." + suggestion_text(label, self.layer_labels_no_pass, "log.layer_labels_no_pass"))
        return found

    # -- summaries --------------------------------------------------------------------
    @property
    def buffer_updates(self) -> list[dict[str, Any]]:
        """Bookkeeping records (buffer updates such as BatchNorm's counter), which take no label number.

        See :mod:`lens_train.capture.bookkeeping` for the rule.

        Example:
            >>> import torch, lens_train as lt
            >>> bn = torch.nn.BatchNorm1d(2).train()
            >>> [(u["label"], u["buffer"]) for u in lt.log_forward_pass(bn, torch.randn(3, 2)).buffer_updates if u["writes"]]
            [('add_bk_1', 'num_batches_tracked')]
        """
        return self.meta.get("buffer_updates", [])

    @property
    def input_layers(self) -> list[str]:
        """Labels of the model's inputs."""
        return [layer.layer_label for layer in self.layers if layer.is_input]

    @property
    def output_layers(self) -> list[str]:
        """Labels of the model's outputs."""
        return [layer.layer_label for layer in self.layers if layer.is_output]

    @property
    def buffer_layers(self) -> list[str]:
        """Labels of buffers read during the forward pass."""
        return [layer.layer_label for layer in self.layers if layer.is_buffer]

    @property
    def num_operations(self) -> int:
        """Number of operations (layer passes that are not inputs, outputs or buffers)."""
        return sum(1 for layer in self.layers if not (layer.is_input or layer.is_output or layer.is_buffer))

    @property
    def num_param_ops(self) -> int:
        """Number of operations that used parameters."""
        return sum(1 for layer in self.layers if layer.num_params)

    @property
    def num_saved(self) -> int:
        """Number of layer passes whose activation was saved."""
        return sum(1 for layer in self.layers if layer.is_saved)

    @property
    def total_activation_bytes(self) -> int:
        """Bytes of every tensor computed (saved or not)."""
        return sum(layer.tensor_fsize for layer in self.layers)

    @property
    def saved_activation_bytes(self) -> int:
        """Bytes of the saved activations."""
        return sum(layer.tensor_fsize for layer in self.layers if layer.is_saved)

    # -- tables (written by lens_train.bundle.export, plugged in through capture.outlets) --
    def to_pandas(self) -> Any:
        """One row per layer pass as a ``pandas.DataFrame`` (needs pandas); see :mod:`lens_train.bundle.export`."""
        return export_table(self, "pandas", None)

    def to_csv(self, path: str | PathLike[str] | None = None) -> str | None:
        """The layer table as CSV, written to ``path`` (returned as text without one).

        Example:
            >>> import torch, lens_train as lt
            >>> lt.log_forward_pass(torch.nn.ReLU(), torch.ones(2)).to_csv().splitlines()[1][:20]
            'input_1_0,input_1_0,'
        """
        return export_table(self, "csv", path)

    def to_json(self, path: str | PathLike[str] | None = None) -> str | None:
        """The layer table as a JSON list of rows, written to ``path`` (returned as text without one).

        Example:
            >>> import json, torch, lens_train as lt
            >>> json.loads(lt.log_forward_pass(torch.nn.ReLU(), torch.ones(2)).to_json())[1]["layer_label"]
            'relu_1_1'
        """
        return export_table(self, "json", path)

    # -- pictures (lens_train.viz builds on capture, so it is imported when used) --------
    def render_graph(self, vis_opt: str = "unrolled", vis_nesting_depth: int | None = None,
                     vis_outpath: str | PathLike[str] = "graph", vis_fileformat: str = "svg", vis_save_only: bool = False,
                     vis_module: str | None = None, vis_gradients: bool = False) -> Path | None:
        """Draw this log's graph to a file; see :func:`lens_train.viz.render_graph`.

        Example:
            >>> import os, tempfile, torch, lens_train as lt
            >>> log = lt.log_forward_pass(torch.nn.Linear(2, 2), torch.ones(1, 2), layers_to_save=None)
            >>> log.render_graph(vis_outpath=os.path.join(tempfile.mkdtemp(), "g"), vis_save_only=True).name
            'g.svg'
        """
        from ..viz import render_graph

        return render_graph(self, vis_opt=vis_opt, vis_nesting_depth=vis_nesting_depth, vis_outpath=vis_outpath,
                            vis_fileformat=vis_fileformat, vis_save_only=vis_save_only, vis_module=vis_module,
                            vis_gradients=vis_gradients)

    def to_dot(self, vis_opt: str = "unrolled", vis_nesting_depth: int | None = None, vis_module: str | None = None,
               vis_gradients: bool = False) -> str:
        """The graph's Graphviz DOT source; see :func:`lens_train.viz.to_dot`.

        Example:
            >>> import torch, lens_train as lt
            >>> log = lt.log_forward_pass(torch.nn.Linear(2, 2), torch.ones(1, 2), layers_to_save=None)
            >>> log.to_dot().startswith('digraph "Linear"')
            True
        """
        from ..viz import to_dot

        return to_dot(self, vis_opt=vis_opt, vis_nesting_depth=vis_nesting_depth, vis_module=vis_module,
                      vis_gradients=vis_gradients)

    # -- re-running (capture.replay re-runs the engine, which builds on this class) ----
    def save_new_activations(self, model: Any, input_args: Any, input_kwargs: Any = None,
                             random_seed: int | None = None) -> ModelLog:
        """Re-run the pass on new input and refresh every saved activation in place.

        See :func:`lens_train.capture.replay.save_new_activations`.

        Example:
            >>> import torch, lens_train as lt
            >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
            >>> log = lt.log_forward_pass(model, torch.ones(1, 2))
            >>> _ = log.save_new_activations(model, torch.zeros(3, 2))
            >>> log["linear_1_1"].activation.shape
            torch.Size([3, 2])
        """
        from .replay import save_new_activations

        return save_new_activations(self, model, input_args, input_kwargs, random_seed)

    # -- interventions (lens_train.interventions builds on capture, so it is imported when used)
    def replay_with(self, edits: Mapping[Any, Any], fallback: str = "error") -> ModelLog:
        """This pass recomputed with ``edits`` from the saved values; see :func:`lens_train.interventions.replay_with`.

        Example:
            >>> import torch, lens_train as lt
            >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
            >>> log = lt.log_forward_pass(model, torch.ones(1, 2), replayable=True)
            >>> log.replay_with({"0": "zero"})["relu_1_2"].activation.abs().sum().item()
            0.0
        """
        from ..interventions import replay_with

        return replay_with(self, edits, fallback=fallback)

    def __str__(self) -> str:
        return format_model_log(self)

    def __repr__(self) -> str:
        return format_model_log(self)
