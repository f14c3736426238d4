"""The layer table of a :class:`ModelLog`: one row per layer pass, as pandas, CSV or JSON.

Example:
    >>> import torch, lens_train as lt
    >>> log = lt.log_forward_pass(torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU()), torch.ones(1, 3))
    >>> rows = layer_rows(log)
    >>> rows[1]["layer_label"], rows[1]["tensor_shape"], rows[1]["num_params"], rows[1]["parent_layers"]
    ('linear_1_1', [1, 2], 8, ['input_1_0'])
"""

from __future__ import annotations

import csv
import io
import json
import os
from typing import Any

from ..capture.model_log import ModelLog
from ..errors import InvalidArgumentError, MissingDependencyError
from .files import as_path

COLUMNS = (
    "layer_label", "layer_label_no_pass", "pass_num", "num_passes", "layer_type", "func_name", "operation_index",
    "tensor_shape", "tensor_dtype", "tensor_fsize", "device", "requires_grad", "grad_fn_name",
    "parent_layers", "child_layers", "module", "containing_modules", "module_outputs",
    "num_params", "param_bytes", "param_addresses", "param_shapes", "time_s",
    "is_input", "is_output", "is_buffer", "is_inplace", "is_saved",
)
_LIST_COLUMNS = frozenset({"tensor_shape", "parent_layers", "child_layers", "containing_modules", "module_outputs",
                           "param_addresses", "param_shapes"})


def layer_rows(log: ModelLog) -> list[dict[str, Any]]:
    """One dict per layer pass, in execution order, holding :data:`COLUMNS` (lists as lists)."""
    rows = []
    for layer in log.layers:
        row = {c: getattr(layer, c) for c in COLUMNS if hasattr(layer, c) and c not in _LIST_COLUMNS}
        row.update(
            tensor_shape=list(layer.tensor_shape),
            tensor_dtype=None if layer.tensor_dtype is None else str(layer.tensor_dtype).removeprefix("torch."),
            parent_layers=list(layer.parent_layers),
            child_layers=list(layer.child_layers),
            module=layer.computed_inside_module,
            containing_modules=list(layer.containing_modules),
            module_outputs=list(layer.module_outputs),
            param_addresses=list(layer.param_addresses),
            param_shapes=[list(s) for s in layer.parent_params],
            is_saved=layer.is_saved,
        )
        rows.append({c: row[c] for c in COLUMNS})
    return rows


def to_pandas(log: ModelLog) -> Any:
    """The layer table as a ``pandas.DataFrame`` (pandas is an optional dependency).

    Example:
        >>> import torch, lens_train as lt
        >>> df = to_pandas(lt.log_forward_pass(torch.nn.ReLU(), torch.ones(2)))  # doctest: +SKIP
        >>> list(df["layer_label"])  # doctest: +SKIP
        ['input_1_0', 'relu_1_1', 'output_1_2']
    """
    try:
        import pandas
    except ImportError:
        raise MissingDependencyError(
            "log.to_pandas() needs pandas, which is not installed: pip install pandas "
            "(or pip install 'lens-train[pandas]'). log.to_csv(path) and log.to_json(path) work without it."
        ) from None
    return pandas.DataFrame(layer_rows(log), columns=list(COLUMNS))


def to_csv(log: ModelLog, path: str | os.PathLike | None = None) -> str | None:
    """The layer table as CSV (list cells as JSON), written to ``path`` or returned as text.

    Example:
        >>> import torch, lens_train as lt
        >>> text = to_csv(lt.log_forward_pass(torch.nn.ReLU(), torch.ones(2)))
        >>> text.splitlines()[2].split(",")[:4]
        ['relu_1_1', 'relu_1_1', '1', '1']
    """
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in layer_rows(log):
        writer.writerow({c: json.dumps(v) if c in _LIST_COLUMNS else _cell(v) for c, v in row.items()})
    return _emit(buf.getvalue(), path)


def to_json(log: ModelLog, path: str | os.PathLike | None = None) -> str | None:
    """The layer table as a JSON list of row objects, written to ``path`` or returned as text.

    Example:
        >>> import json, torch, lens_train as lt
        >>> rows = json.loads(to_json(lt.log_forward_pass(torch.nn.ReLU(), torch.ones(2))))
        >>> rows[1]["layer_type"], rows[1]["tensor_dtype"], rows[1]["tensor_fsize"]
        ('relu', 'float32', 8)
    """
    return _emit(json.dumps(layer_rows(log), indent=1) + "\n", path)


def export_table(log: ModelLog, how: str, path: str | os.PathLike | None = None) -> Any:
    """The layer table as ``how``: ``"csv"``, ``"json"`` (text, or written to ``path``) or ``"pandas"``.

    Example:
        >>> import torch, lens_train as lt
        >>> export_table(lt.log_forward_pass(torch.nn.ReLU(), torch.ones(2)), "csv").splitlines()[0][:11]
        'layer_label'
    """
    if how == "pandas":
        return to_pandas(log)
    return {"csv": to_csv, "json": to_json}[how](log, path)


def _cell(v: Any) -> Any:
    return "" if v is None else v


def _emit(text: str, path: str | os.PathLike | None) -> str | None:
    if path is None:
        return text
    out = as_path(path, "path", "log.to_csv('layers.csv') (or no path, for the text)")
    if out.is_dir():
        raise InvalidArgumentError(f"path must be a file to write, got the directory {str(out)!r}. Example: "
                                   f"log.to_csv({str(out / 'layers.csv')!r}).")
    with open(out, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    return None
