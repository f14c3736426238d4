"""log.to_pandas / to_csv / to_json: one row per layer pass."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import lens_train as lt
from lens_train.errors import MissingDependencyError
from lens_train.bundle.export import COLUMNS, layer_rows
from tests.models import SimpleRecurrent


@pytest.fixture()
def log() -> lt.ModelLog:
    return lt.log_forward_pass(SimpleRecurrent(), torch.randn(2, 5), layers_to_save=["fc"], random_seed=0)


def test_rows_describe_each_pass(log: lt.ModelLog) -> None:
    rows = layer_rows(log)
    assert [r["layer_label"] for r in rows] == log.layer_labels
    row = rows[4]
    assert row == {
        **row,
        "layer_label": "linear_1_1:2", "layer_label_no_pass": "linear_1_1", "pass_num": 2, "num_passes": 4,
        "layer_type": "linear", "func_name": "linear", "tensor_shape": [2, 5], "tensor_dtype": "float32",
        "tensor_fsize": 40, "parent_layers": ["mul_1_3:1"], "child_layers": ["add_1_2:2"], "module": "fc:2",
        "module_outputs": ["fc:2"], "num_params": 30, "param_bytes": 120, "param_addresses": ["fc.weight", "fc.bias"],
        "param_shapes": [[5, 5], [5]], "is_saved": True, "is_input": False,
    }
    assert row["time_s"] == log["linear_1_1:2"].time_s > 0
    assert [r["is_saved"] for r in rows].count(True) == 4


def test_csv_round_trips_through_the_csv_module(log: lt.ModelLog, tmp_path: Path) -> None:
    assert log.to_csv(tmp_path / "t.csv") is None
    text = (tmp_path / "t.csv").read_text()
    assert text == log.to_csv()
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert list(parsed[0]) == list(COLUMNS) and len(parsed) == len(log)
    assert json.loads(parsed[4]["parent_layers"]) == ["mul_1_3:1"]
    assert json.loads(parsed[4]["param_shapes"]) == [[5, 5], [5]]
    assert parsed[0]["module"] == "" and parsed[4]["tensor_fsize"] == "40"


def test_json_holds_the_same_rows(log: lt.ModelLog, tmp_path: Path) -> None:
    log.to_json(tmp_path / "t.json")
    assert json.loads((tmp_path / "t.json").read_text()) == json.loads(json.dumps(layer_rows(log)))


def test_a_loaded_log_exports_the_same_table(log: lt.ModelLog, tmp_path: Path) -> None:
    lt.save(log, tmp_path / "b")
    assert lt.load(tmp_path / "b", lazy=True).to_csv() == log.to_csv()


def test_to_pandas(log: lt.ModelLog) -> None:
    pytest.importorskip("pandas")
    df = log.to_pandas()
    assert list(df.columns) == list(COLUMNS) and len(df) == len(log)
    assert df.loc[4, "param_shapes"] == [[5, 5], [5]] and df.loc[4, "num_params"] == 30


def test_to_pandas_without_pandas_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)  # makes `import pandas` fail
    with pytest.raises(MissingDependencyError, match="pip install pandas"):
        lt.log_forward_pass(nn.ReLU(), torch.ones(1)).to_pandas()
    with pytest.raises(ImportError):  # catchable as the usual type
        lt.log_forward_pass(nn.ReLU(), torch.ones(1)).to_pandas()
